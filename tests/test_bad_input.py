"""Bad input, everywhere a user types: each class gets one sentence that says what to do, exit
status 2, no traceback, and nothing already on disk changed.

The entry points' `main(argv)` run in-process (fast; an escaping exception fails the test just
as a traceback would); `test_entry_points_exit_cleanly_as_processes` runs each CLI once as the
user does, for the process-level contract.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from accounting.ledger import LedgerRecord, PrivacyLedger
from results.export import main as export_main
from search.privacy import main as privacy_main
from search.run import main as search_main
from tests.helpers import CHEAP_1, assert_one_sentence_error, make_experiment, run
from trainers.__main__ import main as trainer_main

TINY = [
    "--space", "fmnist_quick",
    "--set", "dataset=synthetic", "--set", "synthetic_examples=320",
    "--set", "validation_fraction=0.2", "--set", "batch_size=64", "--set", "delta=1e-4",
]  # fmt: skip


NO_DATA = ["--set", "data_dir=/nonexistent", "--set", "download=false"]
NO_WEIGHTS = ["--set", "model=test_nfnet", "--set", "synthetic_channels=3",
              "--set", "pretrained_file=/nonexistent/w.safetensors"]  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def refused(main, argv, capsys, fragment: str) -> None:
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own refusals
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "error: " in lines[-1] and fragment in lines[-1], err


@pytest.fixture
def storage(tmp_path):
    """A storage path that already holds an experiment (which must come through untouched)."""
    store = tmp_path / "runs"
    make_experiment(store / "kept", [CHEAP_1], searcher="random")
    return store


# --- search/run.py ------------------------------------------------------------------------

SEARCH_CASES = {
    "unknown space": (["--space", "nope"], "unknown search space 'nope'"),
    "no space": (["--num-samples", "2"], "choose a space with --space"),
    "unknown hyperparameter": ([*TINY, "--set", "lr=1"], "unknown hyperparameter 'lr'"),
    "unparsable setting": ([*TINY, "--set", "epochs=many"], "epochs must be int"),
    "setting without =": ([*TINY, "--set", "epochs"], "--set expects key=value"),
    "unparsable flag": ([*TINY, "--target-epsilon", "abc"], "invalid float value: 'abc'"),
    "epsilon 0": ([*TINY, "--target-epsilon", "0"], "positive finite"),
    "epsilon negative": ([*TINY, "--target-epsilon", "-1"], "positive finite"),
    "epsilon nan": ([*TINY, "--target-epsilon", "nan"], "positive finite"),
    "delta 0": ([*TINY, "--delta", "0"], "strictly between 0 and 1"),
    "delta 1": ([*TINY, "--delta", "1"], "strictly between 0 and 1"),
    "delta over 1/n": ([*TINY, "--delta", "0.01"], "not below 1/n"),
    "batch 0 (q = 0)": ([*TINY, "--set", "batch_size=0"], "batch_size must be ≥ 1"),
    "batch over n": ([*TINY, "--set", "batch_size=100000"], "training examples; lower it"),
    "budgets not numbers": ([*TINY, "--budgets", "1,x"], "not a comma-separated list"),
    "budgets not positive": ([*TINY, "--budgets", "1,-2"], "every budget ε must be a positive"),
    "validation off": ([*TINY, "--set", "validation=off"], "nothing to select on"),
    "no records held out": ([*TINY, "--set", "validation_fraction=0"], "holds no records out"),
    "too few held out": ([*TINY, "--set", "validation_fraction=0.001"], "holds no records out"),
    "selecting on the test split": (
        [*TINY, "--set", "validation=public", "--set", "validation_data=test"],
        "test split is refused",
    ),
    "validation noise too small for the budget": (
        [*TINY, "--target-epsilon", "1", "--set", "val_noise_multiplier=0.5"],
        "validation scores alone would spend",
    ),
    "sigma 0": ([*TINY, "--set", "noise_multiplier=0"], "noise_multiplier must be a positive"),
    "sigma negative": ([*TINY, "--set", "noise_multiplier=-1"], "noise_multiplier must be"),
    "zero trials": ([*TINY, "--num-samples", "0"], "--num-samples must be ≥ 1"),
    "negative count": ([*TINY, "--max-concurrent", "-1"], "--max-concurrent must be ≥ 0"),
    "zero CPUs per trial": ([*TINY, "--cpus-per-trial", "0"], "needs a CPU or a GPU"),
    "zero CPUs": ([*TINY, "--num-cpus", "0"], "--num-cpus must be ≥ 1"),
    "zero epochs": ([*TINY, "--set", "epochs=0"], "epochs must be ≥ 1"),
    "one trial over its own target": (
        [*TINY, "--set", "noise_multiplier=0.3", "--set", "target_epsilon=1"],
        "would spend ε=",
    ),
    "sigma fixed under a budget": (
        [*TINY, "--set", "noise_multiplier=5", "--target-epsilon", "1"],
        "drop --set noise_multiplier",
    ),
    "unknown distribution": (
        [*TINY, "--search-accounting", "random-stopping", "--trials-distribution", "uniform"],
        "invalid choice: 'uniform'",
    ),
    "eta without negative-binomial": ([*TINY, "--eta", "2"], "--eta applies to"),
    "random stopping with ASHA": (
        [*TINY, "--search-accounting", "random-stopping", "--scheduler", "asha"],
        "--scheduler fifo",
    ),
    "storage path is a file": (
        [*TINY, "--storage-path", "{storage}/kept/search.json"],
        "cannot create --storage-path",
    ),
    "name escapes storage": ([*TINY, "--name", "../escape"], "--name must be one folder name"),
    "absolute name": ([*TINY, "--name", "/tmp/abs"], "--name must be one folder name"),
    "existing experiment": ([*TINY, "--name", "kept"], "continue it with --resume"),
    "device without GPUs": ([*TINY, "--set", "device=cuda"], "--gpus-per-trial above 0"),
    "missing data set": (
        ["--space", "fmnist_quick", *NO_DATA],
        "Fashion-MNIST not found",
    ),
    "missing weights": (
        [*TINY, *NO_WEIGHTS],
        "pretrained_file '/nonexistent/w.safetensors' does not exist",
    ),  # fmt: skip
    "unknown model": ([*TINY, "--set", "model=nope_net"], "unknown model 'nope_net'"),
    "layers the engine cannot clip": (
        [
            *TINY,
            "--set",
            "model=test_convnext",
            "--set",
            "synthetic_channels=3",
            "--set",
            "synthetic_image_size=32",
            "--set",
            "clipping=fast",
        ],
        "fast clipping does not support",
    ),  # fmt: skip
    "unknown layer selection": (
        [*TINY, "--set", "trainable_layers=some"],
        "unknown trainable_layers 'some'",
    ),
    "unreachable cluster": ([*TINY, "--address", "127.0.0.1:9"], "cannot reach a Ray cluster"),
}


@pytest.mark.parametrize("case", SEARCH_CASES)
def test_search_refuses(case, storage, capsys):
    argv, fragment = SEARCH_CASES[case]
    argv = [a.replace("{storage}", str(storage)) for a in argv]
    if "--storage-path" not in argv:
        argv += ["--storage-path", str(storage)]
    if "--name" not in argv:
        argv += ["--name", "new"]
    before = snapshot(storage)
    refused(search_main, argv, capsys, fragment)
    assert snapshot(storage) == before  # nothing written, nothing changed
    assert sorted(p.name for p in storage.iterdir()) == ["kept"]


RESUME_CASES = {
    "not an experiment": ("plain", "not an experiment directory"),
    "damaged plan": ("damaged", "is damaged"),
    "no name": (None, "--resume needs --name"),
    "name escapes storage": ("../kept", "--name must be one folder name"),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_refuses(case, storage, capsys):
    name, fragment = RESUME_CASES[case]
    (storage / "plain").mkdir()
    (storage / "damaged").mkdir()
    (storage / "damaged" / "search.json").write_text("{cut off")
    before = snapshot(storage)
    argv = ["--storage-path", storage, "--resume", *(["--name", name] if name else [])]
    refused(search_main, argv, capsys, fragment)
    assert snapshot(storage) == before


# --- search/privacy.py --------------------------------------------------------------------

MECHANISM = ["--sample-rate", "0.01", "--steps", "100", "--delta", "1e-5"]

PRIVACY_CASES = {
    "unparsable": (["--sample-rate", "a", "--steps", "1", "--delta", "1e-5"], "invalid float"),
    "q 0": (
        ["--sample-rate", "0", "--steps", "10", "--noise-multiplier", "1", "--delta", "1e-5"],
        "sample_rate must lie in (0, 1]",
    ),  # fmt: skip
    "q over 1": (
        ["--sample-rate", "1.5", "--steps", "10", "--noise-multiplier", "1", "--delta", "1e-5"],
        "sample_rate must lie in (0, 1]",
    ),  # fmt: skip
    "sigma 0": ([*MECHANISM, "--noise-multiplier", "0"], "noise_multiplier must be a positive"),
    "sigma infinite": ([*MECHANISM, "--noise-multiplier", "inf"], "noise_multiplier must be"),
    "steps 0": (
        ["--sample-rate", "0.01", "--steps", "0", "--noise-multiplier", "1", "--delta", "1e-5"],
        "--steps must be ≥ 1",
    ),  # fmt: skip
    "delta 0": ([*MECHANISM[:4], "--delta", "0", "--noise-multiplier", "1"], "delta"),
    "delta 1": ([*MECHANISM[:4], "--delta", "1", "--noise-multiplier", "1"], "delta"),
    "epsilon negative": ([*MECHANISM, "--target-epsilon", "-2"], "target_epsilon"),
    "zero trials": (
        [*MECHANISM, "--noise-multiplier", "1", "--num-trials", "0"],
        "--num-trials must be ≥ 1",
    ),  # fmt: skip
    "mean of K below 1": (
        [
            *MECHANISM,
            "--noise-multiplier",
            "1",
            "--trials-mean",
            "0",
            "--trials-distribution",
            "poisson",
        ],
        "mean number of trials",
    ),  # fmt: skip
    "one trial over the budget": (
        [*MECHANISM, "--noise-multiplier", "0.3", "--target-epsilon", "0.5"],
        "one such trial already spends",
    ),
    "unknown distribution": (
        [
            *MECHANISM,
            "--noise-multiplier",
            "1",
            "--trials-mean",
            "3",
            "--trials-distribution",
            "uniform",
        ],
        "invalid choice",
    ),  # fmt: skip
    "eta without negative-binomial": (
        [*MECHANISM, "--noise-multiplier", "1", "--eta", "2"],
        "--eta needs",
    ),  # fmt: skip
    "nothing to compute": (
        ["--steps", "10", "--noise-multiplier", "1", "--delta", "1e-5"],
        "--sample-rate",
    ),  # fmt: skip
    "not an experiment": (
        ["--ledger", "{storage}/nowhere", "--delta", "1e-5"],
        "no privacy ledger",
    ),  # fmt: skip
    "damaged ledger": (["--ledger", "{storage}/damaged", "--delta", "1e-5"], "is malformed"),
    "ledger and a mechanism": (
        ["--ledger", "{storage}/kept", "--steps", "5", "--delta", "1e-5"],
        "drop --steps",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", PRIVACY_CASES)
def test_privacy_refuses(case, storage, capsys):
    argv, fragment = PRIVACY_CASES[case]
    damaged = storage / "damaged"
    damaged.mkdir()
    good = LedgerRecord(trial_id="t", attempt="a", sample_rate=0.1, noise_multiplier=1, steps=3)
    PrivacyLedger(damaged).append(good)
    with open(damaged / "privacy_ledger.jsonl", "a") as ledger:  # a damaged middle line
        ledger.write('{"trial_id": "t", "bogus": 1}\n')
    PrivacyLedger(damaged).append(good)
    before = snapshot(storage)
    refused(privacy_main, [a.replace("{storage}", str(storage)) for a in argv], capsys, fragment)
    assert snapshot(storage) == before


# --- python -m trainers -------------------------------------------------------------------

SMOKE = ["--space", "fmnist_quick", "--smoke"]

TRAINER_CASES = {
    "unknown space": (["--space", "nope"], "unknown search space"),
    "unknown hyperparameter": ([*SMOKE, "--set", "lr=1"], "unknown hyperparameter 'lr'"),
    "unparsable": ([*SMOKE, "--set", "epochs=many"], "epochs must be int"),
    "epsilon negative": ([*SMOKE, "--set", "target_epsilon=-1"], "target_epsilon"),
    "delta over 1/n": ([*SMOKE, "--set", "delta=0.5"], "is not below 1/n"),
    "batch over n": ([*SMOKE, "--set", "batch_size=100000"], "exceeds the"),
    "sigma 0": ([*SMOKE, "--set", "noise_multiplier=0"], "noise_multiplier must be"),
    "one trial over its target": (
        [*SMOKE, "--set", "noise_multiplier=0.3", "--set", "target_epsilon=1"],
        "would spend ε=",
    ),
    "unwritable output": ([*SMOKE, "--out", "{storage}/kept/search.json/sub"], "cannot create"),
    "missing data set": (
        ["--space", "fmnist_quick", *NO_DATA],
        "Fashion-MNIST not found",
    ),
    "missing weights": (
        [*SMOKE, *NO_WEIGHTS],
        "does not exist",
    ),  # fmt: skip
    "layers the engine cannot clip": (
        ["--space", "vit_cifar100", "--smoke", "--set", "model=test_convnext", "clipping=fast"],
        "fast clipping does not support",
    ),
    "device without a GPU": ([*SMOKE, "--set", "device=cuda"], "no CUDA GPU is visible"),
}


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_trainer_refuses(case, storage, capsys):
    argv, fragment = TRAINER_CASES[case]
    argv = [a.replace("{storage}", str(storage)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(storage / "kept")]  # an existing folder: must stay as it was
    before = snapshot(storage)
    refused(trainer_main, argv, capsys, fragment)
    assert snapshot(storage) == before


# --- results/export.py --------------------------------------------------------------------

EXPORT_CASES = {
    "not a directory": (["{storage}/nowhere"], "is not a directory"),
    "not an experiment": (["{storage}"], "not an experiment directory"),
    "damaged plan": (["{storage}/damaged"], "damaged"),
    "unparsable budgets": (["{storage}/kept", "--budgets", "one"], "comma-separated"),
    "budget not positive": (["{storage}/kept", "--budgets", "1,0"], "positive"),
    "unknown format": (["{storage}/kept", "--format", "xls"], "invalid choice: 'xls'"),
    "table with markdown": (["{storage}/kept", "--table", "frontier"], "--table applies"),
    "unwritable output": (["{storage}/kept", "--out", "{storage}/no/dir/x.md"], "cannot write"),
    "unwritable plot": (
        ["{storage}/kept", "--plot", "{storage}/kept/search.json/p.png"],
        "cannot write",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_export_refuses(case, storage, capsys):
    argv, fragment = EXPORT_CASES[case]
    (storage / "damaged").mkdir()
    (storage / "damaged" / "search.json").write_text("[")
    before = snapshot(storage)
    refused(export_main, [a.replace("{storage}", str(storage)) for a in argv], capsys, fragment)
    assert snapshot(storage) == before


# --- as processes -------------------------------------------------------------------------


def test_entry_points_exit_cleanly_as_processes(tmp_path):
    assert_one_sentence_error(run("search/run.py", "--space", "nope"), "unknown search space")
    assert_one_sentence_error(
        run("search/privacy.py", "--sample-rate", "2", "--steps", "1", "--noise-multiplier", "1",
            "--delta", "1e-5"),
        "sample_rate",
    )  # fmt: skip
    assert_one_sentence_error(run("-m", "trainers", "--space", "nope", "--out", tmp_path),
                              "unknown search space")  # fmt: skip
    assert_one_sentence_error(run("results/export.py", tmp_path), "not an experiment directory")
    assert json.loads(json.dumps(snapshot(tmp_path))) == {}  # none of them wrote a file
