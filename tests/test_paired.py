"""Accuracy changes with their uncertainty: McNemar's exact test and the paired bootstrap on answers that flipped."""

import math

import pytest
from conftest import committed_answers, flipped

from slmops.report.paired import TrainingNoise, binomial_tail, mcnemar, measure_noise, pair, paired_variance, z_test


def test_binomial_tail_and_mcnemar_match_hand_computed_values():
    assert binomial_tail(0, 5) == 1.0
    assert binomial_tail(5, 5) == 1 / 32
    assert binomial_tail(10, 12) == pytest.approx((66 + 12 + 1) / 4096)  # C(12,10) + C(12,11) + C(12,12)
    worse, two_sided = mcnemar(10, 2)
    assert worse == pytest.approx(79 / 4096) and two_sided == pytest.approx(2 * 79 / 4096)
    assert mcnemar(0, 0) == (1.0, 1.0)
    assert mcnemar(2, 10)[0] == pytest.approx(1 - (1 + 12) / 4096)  # P(X >= 2): head better, "worse" unlikely
    assert mcnemar(6, 6)[1] == 1.0  # balanced flips: no evidence either way (capped at 1)


def test_noise_sized_flips_are_within_noise(task):
    base = committed_answers()
    head = flipped(base, 7, 5, task)  # 12 of 300 records flipped, nearly balanced: what another CPU gives
    pairing = pair(task, {"quantized": base}, {"quantized": head})
    em = pairing.shares["exact_match"]
    assert (em.right_to_wrong, em.wrong_to_right, em.n) == (7, 5, 300)
    assert em.change == pytest.approx(-2 / 300)
    assert em.low < 0 < em.high and em.within_noise(0.05)
    assert em.p_worse == pytest.approx(binomial_tail(7, 12)) and em.p_worse > 0.05
    assert pairing.shares["field.intent"].right_to_wrong == 7  # the spoiled field, counted per field too
    assert pairing.shares["field.order_id"].change == 0
    assert pairing.shares["schema_valid"].change == 0


def test_a_real_regression_is_significant_with_its_interval(task):
    base = committed_answers()
    head = flipped(base, 20, 2, task)
    pairing = pair(task, {"quantized": base}, {"quantized": head}, alpha=0.05)
    em = pairing.shares["exact_match"]
    assert em.change == pytest.approx(-18 / 300)
    assert em.high < 0 and not em.within_noise(0.05)
    assert em.p_worse == pytest.approx(binomial_tail(20, 22)) and em.p_worse < 0.001
    # The interval is about the change ± 2 standard errors of a paired difference with 22 discordant records.
    se = math.sqrt(22 / 300 - (18 / 300) ** 2) / math.sqrt(300)
    assert em.low == pytest.approx(em.change - 1.96 * se, abs=0.01)


def test_accuracy_kept_gets_a_bootstrap_interval_when_both_teachers_answered(task):
    base = committed_answers()
    teacher = committed_answers("teacher")
    pairing = pair(
        task, {"quantized": base, "teacher": teacher}, {"quantized": flipped(base, 3, 3, task), "teacher": teacher}
    )
    assert pairing.kept is not None and pairing.kept.change == pytest.approx(0.0)
    assert pairing.kept.low < 0 < pairing.kept.high and pairing.kept.within_noise(0.05)
    assert pair(task, {"quantized": base}, {"quantized": base}).kept is None


def test_no_pairing_when_answers_are_missing_or_the_eval_sets_differ(task):
    base = committed_answers()
    assert pair(task, {}, {"quantized": base}).reason == "no per-record answers of the quantized model at base"
    fewer = pair(task, {"quantized": base}, {"quantized": base[:250]})
    assert fewer.shares == {} and fewer.reason == "the eval sets differ (300 base records, 250 head, 250 shared)"


def test_the_bootstrap_is_seeded(task):
    base = committed_answers()
    head = flipped(base, 9, 4, task)
    first = pair(task, {"quantized": base}, {"quantized": head}).shares["exact_match"]
    again = pair(task, {"quantized": base}, {"quantized": head}).shares["exact_match"]
    assert (first.low, first.high) == (again.low, again.high)


# --- training noise: runs of the same params land apart; the tests add it --------------------------------


def test_z_test_and_paired_variance_match_hand_computed_values():
    assert paired_variance(21, 8, 300) == pytest.approx((29 / 300 - (13 / 300) ** 2) / 300)
    worse, two_sided = z_test(-0.02, 0.0001)  # z = -2
    assert worse == pytest.approx(0.02275, abs=1e-5) and two_sided == pytest.approx(0.0455, abs=1e-4)
    assert z_test(0.0, 0.0) == (1.0, 1.0) and z_test(-0.01, 0.0) == (0.0, 0.0)


def test_measure_noise_is_the_mean_square_difference_over_pairs():
    runs = [{"exact_match": 0.90, "accuracy_kept": 1.0}, {"exact_match": 0.93}, {"exact_match": 0.91}]
    noise = measure_noise(runs, "three seeds")
    assert noise.runs == 3 and set(noise.mean_square_difference) == {"exact_match"}  # only what every run has
    assert noise.mean_square_difference["exact_match"] == pytest.approx((0.03**2 + 0.01**2 + 0.02**2) / 3)
    assert noise.rms("exact_match") == pytest.approx(math.sqrt((0.0009 + 0.0001 + 0.0004) / 3))
    with pytest.raises(ValueError, match="at least two runs"):
        measure_noise(runs[:1])


def test_another_cpu_is_significant_by_mcnemar_alone_and_within_noise_with_training_noise(task):
    """21 records right → wrong and 8 wrong → right: what the same commit gave on an AMD and an Intel CPU. McNemar
    alone calls it a significant regression; with the measured spread between seeds added it is noise."""
    base = committed_answers()
    head = flipped(base, 21, 8, task)
    alone = pair(task, {"quantized": base}, {"quantized": head}).shares["exact_match"]
    assert alone.p_worse == pytest.approx(binomial_tail(21, 29)) and alone.p_worse < 0.05
    noise = TrainingNoise(3, {"exact_match": 0.03**2}, "reports/noise.json")
    pairing = pair(task, {"quantized": base}, {"quantized": head}, noise=noise)
    em = pairing.shares["exact_match"]
    variance = paired_variance(21, 8, 300) + 0.03**2
    assert em.training_noise == 0.03**2 and em.p_worse == pytest.approx(z_test(-13 / 300, variance)[0])
    assert em.p_worse > 0.05 and em.within_noise(0.05) and em.low < alone.low < 0 < em.high
    assert pairing.test_name.startswith("z-test") and pairing.shares["field.intent"].training_noise is None
    # A share the noise file does not cover keeps McNemar's exact test.
    intent = pairing.shares["field.intent"]
    assert intent.p_worse == pytest.approx(mcnemar(intent.right_to_wrong, intent.wrong_to_right)[0])


def test_a_real_regression_stays_significant_with_training_noise(task):
    base = committed_answers()
    pairing = pair(
        task,
        {"quantized": base},
        {"quantized": flipped(base, 40, 2, task)},
        noise=TrainingNoise(3, {"exact_match": 0.0004}),
    )
    em = pairing.shares["exact_match"]
    assert em.p_worse < 0.001 and not em.within_noise(0.05) and em.high < 0
