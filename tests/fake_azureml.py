"""A fake Azure ML workspace for azure-ai-ml's MLClient: an azure-core transport answering the REST calls of
create_or_update, get, stream, download and begin_cancel, with blobs (the code snapshot, the logs, the job's
`results` output) in Azurite on 127.0.0.1.

Written here because the SDK's own test proxy (devtools_testutils) is not on PyPI. Each request is recorded
(method, path, JSON body) so tests can assert what was sent. A submitted job "runs" by copying the folder a test
gives (what scripts/azureml-job.sh would have written) into the `results` output, then ends in `final_status`;
its log is served by the fake itself.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import HttpResponse, HttpTransport
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

DATASTORE = "workspaceblobstore"
CONTAINER = "azureml-blobstore"


def route_datastores_to_azurite(monkeypatch, fake: FakeAzureML) -> None:
    """The SDK reaches a datastore at https://<account>.blob.<cloud suffix>, a name that cannot point at 127.0.0.1
    offline: map that one URL pattern onto Azurite (path-style), all else in the SDK left as it is."""
    from azure.ai.ml.constants._common import STORAGE_ACCOUNT_URLS

    monkeypatch.setitem(STORAGE_ACCOUNT_URLS, "AzureBlob", fake.blobs.url.rstrip("/").rsplit("/", 1)[0] + "/{0}")


def _unsigned_jwt() -> str:
    """A token shaped like Entra ID's (the SDK reads the object id out of it); the fake service checks none."""

    def part(claims: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")

    claims = {"oid": str(uuid.UUID(int=1)), "tid": str(uuid.UUID(int=2))}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"


class FakeCredential:
    def get_token(self, *scopes, **kwargs):
        return AccessToken(_unsigned_jwt(), 2**31)

    def get_token_info(self, *scopes, **kwargs):
        return AccessTokenInfo(_unsigned_jwt(), 2**31)


class _Response(HttpResponse):
    def __init__(self, request, status: int, body=None, content_type="application/json"):
        super().__init__(request, None)
        self.status_code = status
        self.reason = "OK" if status < 400 else "Error"
        self.content_type = content_type
        self.headers = {"Content-Type": content_type, "x-ms-request-id": str(uuid.uuid4())}
        if body is None:
            self._body = b""
        elif isinstance(body, bytes | str):
            self._body = body.encode() if isinstance(body, str) else body
        else:
            self._body = json.dumps(body).encode()

    def body(self):
        return self._body

    # the azure.core.rest side of a response, which the generated clients read
    @property
    def content(self):
        return self._body

    def read(self):
        return self._body

    def text(self, encoding=None):
        return self._body.decode(encoding or "utf-8")

    def iter_bytes(self, **kwargs):
        yield self._body

    def iter_raw(self, **kwargs):
        yield self._body

    def json(self):
        return json.loads(self._body) if self._body else None


class FakeAzureML(HttpTransport):
    """The workspace `ws` in resource group `rg`: jobs, code and environment assets, one blob datastore."""

    def __init__(self, azurite_connection: str, results_dir: Path | None, final_status: str = "Completed"):
        self.blobs = BlobServiceClient.from_connection_string(azurite_connection)
        self.account_key = self.blobs.credential.account_key
        for name in (CONTAINER, "codes"):
            self.blobs.create_container(name)
        self.results_dir = results_dir
        self.final_status = final_status
        self.requests: list[tuple[str, str, dict | None]] = []
        self.jobs: dict[str, dict] = {}
        self.polls: dict[str, int] = {}
        self.cancelled: list[str] = []

    # azure-core transport protocol
    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass

    def send(self, request, **kwargs):
        body = None
        if request.body:
            try:
                body = json.loads(request.body)
            except (TypeError, ValueError):
                body = None
        path = urlparse(request.url).path
        self.requests.append((request.method, path, body))
        for method, pattern, handler in self._routes():
            match = re.search(pattern, path)
            if request.method == method and match:
                return handler(request, body, *match.groups())
        return _Response(request, 404, {"error": {"code": "NotFound", "message": f"fake: {request.method} {path}"}})

    def _routes(self):
        return [
            ("GET", r"/codes/([^/]+)/versions$", lambda r, b, name: _Response(r, 200, {"value": []})),
            ("POST", r"/codes/([^/]+)/versions/([^/]+)/startPendingUpload$", self._pending_upload),
            ("PUT", r"/codes/([^/]+)/versions/([^/]+)$", self._echo),
            ("GET", r"/environments/([^/]+)/versions/([^/]+)$", self._not_found),
            ("PUT", r"/environments/([^/]+)/versions/([^/]+)$", self._echo),
            ("PUT", r"/workspaces/[^/]+/jobs/([^/]+)$", self._create_job),
            ("GET", r"/workspaces/[^/]+/jobs/([^/]+)$", self._get_job),
            ("POST", r"/workspaces/[^/]+/jobs/([^/]+)/cancel$", self._cancel),
            ("GET", r"/workspaces/[^/]+$", self._workspace),
            ("GET", r"/discovery$", self._discovery),
            ("GET", r"/runs/([^/]+)/details$", self._run_details),
            ("GET", r"/fake-logs/([^/]+)/std_log.txt$", self._log),
            ("POST", r"/rundata$", self._run_data),
            ("POST", r"/dataversion/batchGetResolvedUris$", self._resolved_uris),
            ("GET", r"/datastores$", self._datastores),
            ("GET", r"/datastores/([^/]+)$", self._datastore),
            ("POST", r"/datastores/([^/]+)/listSecrets$", self._datastore_secrets),
        ]

    # --- assets ------------------------------------------------------------------------------------------
    def _echo(self, request, body, name, version):
        path = urlparse(request.url).path
        return _Response(request, 200, {**(body or {}), "id": path, "name": version})

    def _not_found(self, request, body, *groups):
        return _Response(request, 404, {"error": {"code": "NotFound", "message": "no such asset"}})

    def _sas(self, container: str) -> str:
        token = generate_container_sas(
            self.blobs.account_name,
            container,
            account_key=self.account_key,
            permission=ContainerSasPermissions(read=True, write=True, list=True, create=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        return f"{self.blobs.url.rstrip('/')}/{container}?{token}"

    def _pending_upload(self, request, body, name, version):
        return _Response(
            request,
            200,
            {
                "blobReferenceForConsumption": {
                    "blobUri": f"{self.blobs.url.rstrip('/')}/codes",
                    "credential": {"credentialType": "SAS", "sasUri": self._sas("codes")},
                },
                "pendingUploadId": str(uuid.uuid4()),
                "pendingUploadType": "TemporaryBlobReference",
            },
        )

    # --- jobs --------------------------------------------------------------------------------------------
    def _job(self, name: str, status: str) -> dict:
        job = json.loads(json.dumps(self.jobs[name]))
        job["properties"]["status"] = status
        return job

    def _create_job(self, request, body, name):
        path = urlparse(request.url).path
        job = {**body, "id": path, "name": name, "type": "Microsoft.MachineLearningServices/workspaces/jobs"}
        studio = {"endpoint": f"https://ml.azure.com/runs/{name}", "jobServiceType": "Studio"}
        job["properties"]["services"] = {"Studio": studio}
        self.jobs[name] = job
        self.polls[name] = 0
        return _Response(request, 201, self._job(name, "Starting"))

    def _status(self, name: str) -> str:
        if name in self.cancelled:
            return "Canceled"
        return "Running" if self.polls[name] < 2 else self.final_status

    def _get_job(self, request, body, name):
        if name not in self.jobs:
            return self._not_found(request, body)
        return _Response(request, 200, self._job(name, self._status(name)))

    def _cancel(self, request, body, name):
        self.cancelled.append(name)
        return _Response(request, 202, None)

    # --- workspace discovery and run history -------------------------------------------------------------
    def _workspace(self, request, body):
        return _Response(
            request,
            200,
            {
                "id": urlparse(request.url).path,
                "name": "ws",
                "location": "westeurope",
                "properties": {"discoveryUrl": "https://westeurope.api.azureml.ms/discovery"},
            },
        )

    def _discovery(self, request, body):
        return _Response(request, 200, {"api": "https://westeurope.api.azureml.ms"})

    def _log_url(self, name: str) -> str:
        return f"https://westeurope.api.azureml.ms/fake-logs/{name}/std_log.txt"

    def _log(self, request, body, name):
        text = f"dvc repro in job {name}\nRunning stage 'teacher':\n"
        if self.final_status == "Failed":
            text += "ERROR: failed to reproduce 'teacher'\n"
        return _Response(request, 200, text, content_type="text/plain")

    def _run_details(self, request, body, name):
        if name not in self.jobs:
            return self._not_found(request, body)
        self.polls[name] += 1
        status = self._status(name)
        if status == "Completed" and self.results_dir is not None:
            self._write_results(name)
        details = {"runId": name, "status": status, "logFiles": {"user_logs/std_log.txt": self._log_url(name)}}
        if status == "Failed":
            details["error"] = {"error": {"code": "UserError", "message": "dvc repro exited 1"}}
        return _Response(request, 200, details)

    def _write_results(self, name: str) -> None:
        container = self.blobs.get_container_client(CONTAINER)
        for path in self.results_dir.rglob("*"):
            if path.is_file():
                blob = f"azureml/{name}/results/{path.relative_to(self.results_dir).as_posix()}"
                container.upload_blob(blob, path.read_bytes(), overwrite=True)

    def _run_data(self, request, body):
        name = body["runId"]
        asset = f"azureml://locations/westeurope/workspaces/ws/data/azureml_{name}_output_data_results/versions/1"
        return _Response(
            request,
            200,
            {
                "runMetadata": {
                    "runId": name,
                    "status": self._status(name),
                    "outputs": {"results": {"assetId": asset, "type": "uri_folder"}},
                }
            },
        )

    def _resolved_uris(self, request, body):
        values = {}
        for asset in body["values"]:
            name = re.search(r"azureml_(.+)_output_data_results", asset).group(1)
            uri = (
                "azureml://subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/workspaces/ws/"
                f"datastores/{DATASTORE}/paths/azureml/{name}/results/"
            )
            values[asset] = {"uri": uri, "type": "UriFolder"}
        return _Response(request, 200, {"values": values})

    def _datastore(self, request, body, name):
        return _Response(
            request,
            200,
            {
                "id": urlparse(request.url).path.split("/datastores")[0] + f"/datastores/{name}",
                "name": name,
                "properties": {
                    "datastoreType": "AzureBlob",
                    "accountName": self.blobs.account_name,
                    "containerName": CONTAINER,
                    "endpoint": "core.windows.net",
                    "protocol": "https",
                    "credentials": {"credentialsType": "AccountKey"},
                    "isDefault": True,
                },
            },
        )

    def _datastores(self, request, body):
        return _Response(request, 200, {"value": [self._datastore(request, body, DATASTORE).json()]})

    def _datastore_secrets(self, request, body, name):
        return _Response(request, 200, {"secretsType": "AccountKey", "key": self.account_key})
