"""The identities Azure calls are made with: a fresh GitHub OIDC token for every Entra ID token (waits longer than
an hour), the token file `dvc pull` signs in with, and the teacher's key read from Key Vault. Entra ID and Key
Vault are fakes on azure-core transports (tests/fake_azureml.py's responses); GitHub's token service is a local
HTTP server."""

import http.server
import json
import threading
from urllib.parse import parse_qs, urlparse

import pytest
from conftest import ROOT
from fake_azureml import FakeCredential, LocalTransport, _Response

from slmops import azureml
from slmops.core.errors import InputError

TENANT, CLIENT = "72f988bf-0000-0000-0000-000000000001", "0b5c0a4e-0000-0000-0000-000000000002"
BEARER = "github-request-token"


class GitHubTokenService(http.server.ThreadingHTTPServer):
    """GitHub's OIDC token service for a job with `id-token: write`: a new JWT-like token per request, `gh-1`,
    `gh-2`..., or the `status` it is told to answer."""

    def __init__(self):
        self.issued: list[str] = []
        self.audiences: list[str] = []
        self.status = 200
        self.answer = None  # the JSON answered instead of {"value": <token>}
        self.paths: list[str] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                assert self.headers["Authorization"] == f"Bearer {BEARER}"
                service.audiences += parse_qs(urlparse(self.path).query)["audience"]
                if service.status != 200:
                    self.send_response(service.status)
                    self.end_headers()
                    return
                service.issued.append(f"gh-{len(service.issued) + 1}")
                service.paths.append(self.path)
                answer = {"value": service.issued[-1]} if service.answer is None else service.answer
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/_apis/distributedtask/hubs/build/plans/1/jobs/2/idtoken?api-version=2.0"


@pytest.fixture()
def github(monkeypatch):
    service = GitHubTokenService()
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", service.url)
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", BEARER)
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT)
    yield service
    service.shutdown()
    service.server_close()


class FakeEntraID(LocalTransport):
    """Entra ID's token endpoint: records each client assertion and grants a token valid `expires_in` seconds."""

    def __init__(self, expires_in: int):
        self.expires_in = expires_in
        self.assertions: list[str] = []

    def send(self, request, **kwargs):
        assert request.method == "POST" and urlparse(request.url).path == f"/{TENANT}/oauth2/v2.0/token", request.url
        form = request.data if isinstance(request.data, dict) else parse_qs(request.body.decode())
        form = {k: v[0] if isinstance(v, list) else v for k, v in form.items()}
        assert form["client_id"] == CLIENT and form["grant_type"] == "client_credentials"
        self.assertions.append(form["client_assertion"])
        token = {"access_token": f"entra-{len(self.assertions)}", "expires_in": self.expires_in, "token_type": "Bearer"}
        return _Response(request, 200, token)


def test_the_github_token_service_is_asked_for_the_exchange_audience(github):
    assert azureml.github_oidc_token() == "gh-1"
    assert azureml.github_oidc_token() == "gh-2"
    assert github.audiences == ["api://AzureADTokenExchange"] * 2


def test_on_github_a_wait_over_an_hour_gets_a_new_entra_token_with_a_fresh_github_token(github, monkeypatch):
    """What makes waits over an hour work: the Azure CLI after azure/login holds one GitHub token, expired when it
    needs a second Entra ID token (AADSTS700024); this credential asks GitHub again for each one."""
    import time

    entra = FakeEntraID(expires_in=3600)
    credential = azureml.azure_credential(transport=entra)
    first = credential.get_token("https://management.azure.com/.default")
    start, real_time = time.time(), time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3700)  # 1 h 2 min later: the first token has expired
    second = credential.get_token("https://management.azure.com/.default")
    assert type(credential).__name__ == "ClientAssertionCredential"
    assert (first.token, second.token) == ("entra-1", "entra-2") and second.expires_on > start + 3700
    assert entra.assertions == github.issued == ["gh-1", "gh-2"]


def test_a_token_still_valid_is_reused_without_asking_github(github):
    entra = FakeEntraID(expires_in=3600)
    credential = azureml.azure_credential(transport=entra)
    tokens = {credential.get_token("https://ml.azure.com/.default").token for _ in range(3)}
    assert tokens == {"entra-1"} and github.issued == ["gh-1"]


def test_off_github_the_default_chain_is_used(monkeypatch):
    for name in azureml.GITHUB_OIDC:
        monkeypatch.delenv(name, raising=False)
    assert type(azureml.azure_credential()).__name__ == "DefaultAzureCredential"


def test_the_token_file_signs_dvc_in_with_workload_identity(github, tmp_path, monkeypatch):
    """`python -m slmops.azureml oidc-token FILE` before `dvc pull`: DVC's DefaultAzureCredential, told
    AZURE_TOKEN_CREDENTIALS=WorkloadIdentityCredential, signs in with the token in the file."""
    from azure.identity import DefaultAzureCredential

    token_file = tmp_path / "oidc-token"
    assert azureml.main(["oidc-token", str(token_file)]) == 0
    assert token_file.read_text() == "gh-1" and token_file.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "WorkloadIdentityCredential")
    entra = FakeEntraID(expires_in=3600)
    assert DefaultAzureCredential(transport=entra).get_token("https://storage.azure.com/.default").token == "entra-1"
    assert entra.assertions == ["gh-1"]


def test_github_token_failures_exit_2_naming_the_service(github, monkeypatch, tmp_path, capsys):
    github.status = 403
    assert azureml.main(["oidc-token", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "ACTIONS_ID_TOKEN_REQUEST_URL" in err and "403" in err and not (tmp_path / "t").exists()
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
    with pytest.raises(InputError, match="not a GitHub job with id-token: write"):
        azureml.github_oidc_token()


class FakeKeyVault(LocalTransport):
    """A vault holding `secrets` ({name: value}); answers 401 with Key Vault's challenge to a request without a
    token (the SDK's first request), 403 for the names in `forbidden`."""

    def __init__(self, secrets: dict[str, str], forbidden=()):
        self.secrets, self.forbidden = secrets, set(forbidden)

    def send(self, request, **kwargs):
        name = urlparse(request.url).path.split("/")[2]
        if "Authorization" not in request.headers:
            response = _Response(request, 401, {"error": {"code": "Unauthorized"}})
            response.headers["WWW-Authenticate"] = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net"'
            )
            return response
        if name in self.forbidden:
            return _Response(request, 403, {"error": {"code": "Forbidden", "message": "no get permission"}})
        if name not in self.secrets:
            return _Response(request, 404, {"error": {"code": "SecretNotFound", "message": name}})
        secret_id = f"https://teachers.vault.azure.net/secrets/{name}/0123456789abcdef"
        return _Response(request, 200, {"value": self.secrets[name], "id": secret_id, "attributes": {"enabled": True}})


VAULT = "https://teachers.vault.azure.net"


def test_the_teacher_key_is_read_from_key_vault():
    vault = FakeKeyVault({"teacher-key": "sk-from-vault"})
    assert azureml.read_secret(VAULT, "teacher-key", FakeCredential(), transport=vault) == "sk-from-vault"


@pytest.mark.parametrize(
    ("secrets", "forbidden", "message"),
    [
        ({}, (), "no secret named 'teacher-key'"),
        ({"teacher-key": "x"}, ("teacher-key",), "secret 'teacher-key' not readable \\(403"),
        ({"teacher-key": ""}, (), "secret 'teacher-key' is empty"),
    ],
)
def test_a_missing_forbidden_or_empty_secret_names_the_vault_and_the_secret(secrets, forbidden, message):
    vault = FakeKeyVault(secrets, forbidden)
    with pytest.raises(InputError, match=f"Key Vault {VAULT}: {message}"):
        azureml.read_secret(VAULT, "teacher-key", FakeCredential(), transport=vault, retry_total=0)


def test_pipeline_sh_points_dvc_at_a_fresh_github_token_on_github_only(github, tmp_path):
    """scripts/pipeline.sh's use_fresh_github_token, run by bash before `dvc pull package` on the azureml backend."""
    import os
    import re
    import subprocess
    import sys

    script = (ROOT / "scripts/pipeline.sh").read_text()
    function = re.search(r"^use_fresh_github_token\(\) \{.*?^\}", script, re.S | re.M).group(0)
    show = 'echo "$AZURE_TOKEN_CREDENTIALS|${AZURE_FEDERATED_TOKEN_FILE:-}"'
    path = f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"

    def run(**env):
        command = ["bash", "-c", f"set -euo pipefail\n{function}\nuse_fresh_github_token\n{show}"]
        base = {"PATH": path, "PYTHONPATH": str(ROOT), "RUNNER_TEMP": str(tmp_path), "AZURE_TOKEN_CREDENTIALS": "-"}
        return subprocess.run(command, env={**base, **env}, capture_output=True, text=True)

    github_env = {name: os.environ[name] for name in azureml.GITHUB_OIDC}
    on_github = run(**github_env)
    assert on_github.stdout == f"WorkloadIdentityCredential|{tmp_path}/slmops-oidc-token\n", on_github.stderr
    assert (tmp_path / "slmops-oidc-token").read_text() == "gh-1"
    assert run().stdout == "-|\n"  # a laptop: DVC's own credential chain, untouched
    github.status = 500
    failed = run(**github_env)
    assert failed.returncode == 2 and "OIDC token service" in failed.stderr


def test_an_existing_token_file_ends_mode_600(github, tmp_path):
    token_file = tmp_path / "oidc-token"
    token_file.write_text("old")
    token_file.chmod(0o644)
    assert azureml.main(["oidc-token", str(token_file)]) == 0
    assert token_file.read_text() == "gh-1" and token_file.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["oidc-token"]  # no temporary file left


@pytest.mark.parametrize(
    ("answer", "url", "path", "message"),
    [
        ([1, 2], None, "t", "answered without a token"),
        (None, "not a url", "t", "OIDC token service (ACTIONS_ID_TOKEN_REQUEST_URL) failed: unknown url type"),
        (None, None, "missing/t", "cannot write the token there (No such file or directory)"),
        (None, None, ".", "cannot write the token there"),
    ],
)
def test_bad_token_answers_urls_and_paths_exit_2(github, monkeypatch, tmp_path, capsys, answer, url, path, message):
    github.answer = answer
    if url:
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", url)
    assert azureml.main(["oidc-token", str(tmp_path / path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_the_audience_is_sent_once_whatever_the_url_holds(github, monkeypatch):
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{github.url}&audience=other#fragment")
    azureml.github_oidc_token()
    assert github.audiences == ["api://AzureADTokenExchange"]
    assert "api-version=2.0" in github.paths[0]


class FailingCredential:
    def get_token(self, *scopes, **kwargs):
        from azure.core.exceptions import ClientAuthenticationError

        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token (no az login)")


def test_no_sign_in_is_an_error_before_anything_is_sent():
    config = azureml.load_config(ROOT / "azureml.yaml")
    with pytest.raises(InputError, match="Azure sign-in failed .*az login.*\n  DefaultAzureCredential failed"):
        azureml.client(config, FailingCredential())


def own_config(tmp_path):
    """The shipped azureml.yaml with a subscription of one's own in place of the placeholder."""
    path = tmp_path / "azureml.yaml"
    text = (ROOT / "azureml.yaml").read_text()
    path.write_text(text.replace(azureml.PLACEHOLDER_SUBSCRIPTION, "3f2504e0-4f89-11d3-9a0c-0305e82c3301"))
    return path


def test_submit_and_cancel_exit_2_when_github_refuses_the_token(github, capsys, tmp_path):
    """One line, exit 2, where azure-ai-ml would wrap the error in its own exception mid-submission."""
    from slmops import cli

    github.status = 500
    assert cli.main(["azureml", "cancel", "some-job", "--config", str(own_config(tmp_path))]) == 2
    assert "error: GitHub's OIDC token service (ACTIONS_ID_TOKEN_REQUEST_URL) failed" in capsys.readouterr().err


def test_the_placeholder_subscription_and_an_empty_config_exit_2_naming_the_file(tmp_path, capsys):
    from slmops import cli

    shipped = str(ROOT / "azureml.yaml")
    assert cli.main(["azureml", "cancel", "some-job", "--config", shipped]) == 2
    assert f"{shipped}: azureml.workspace.subscription_id is the placeholder" in capsys.readouterr().err
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert cli.main(["azureml", "submit", "--config", str(empty)]) == 2
    assert f"{empty}: no `azureml:` section" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (403, "Azure ML refused the request \\(403\\) on workspace slmops .* the role AzureML Data Scientist"),
        (404, "Azure ML found no such resource \\(404\\) in workspace slmops .* check azureml.yaml's workspace"),
    ],
)
def test_the_workspace_refusing_or_missing_is_bad_input_naming_it(tmp_path, status, message):
    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import HttpRequest

    config = azureml.load_config(own_config(tmp_path))
    response = _Response(HttpRequest("GET", "https://management.azure.com/x"), status, {"error": {"message": "no"}})
    with pytest.raises(InputError, match=message), azureml.workspace_answers(config):
        raise HttpResponseError(response=response)
    with pytest.raises(HttpResponseError), azureml.workspace_answers(config):  # others are not input errors
        raise HttpResponseError(response=_Response(HttpRequest("GET", "https://x"), 500, {}))


class UnreachableVault(FakeKeyVault):
    def send(self, request, **kwargs):
        from azure.core.exceptions import ServiceRequestError

        raise ServiceRequestError("Connection refused")


def test_a_bad_vault_url_an_unreachable_vault_or_no_sign_in_name_the_vault():
    with pytest.raises(InputError, match="Key Vault 'https://127.0.0.1:9/': not a vault URL"):
        azureml.read_secret("https://127.0.0.1:9/", "teacher-key", FakeCredential())
    with pytest.raises(InputError, match=f"Key Vault {VAULT}: unreachable \\(Connection refused"):
        azureml.read_secret(VAULT, "teacher-key", FakeCredential(), transport=UnreachableVault({}), retry_total=0)
    vault = FakeKeyVault({"teacher-key": "x"})
    with pytest.raises(InputError, match=f"Key Vault {VAULT}: sign-in failed for secret 'teacher-key'"):
        azureml.read_secret(VAULT, "teacher-key", FailingCredential(), transport=vault, retry_total=0)


def test_help_exits_0(capsys):
    assert azureml.main(["--help"]) == 0 and "python -m slmops.azureml oidc-token FILE" in capsys.readouterr().out
