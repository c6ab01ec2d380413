"""`python search/privacy.py`: plan the privacy of a search, or audit a recorded one.

Examples:
    # ε of one trial (q, σ, T):
    python search/privacy.py --sample-rate 0.0341 --noise-multiplier 2.15 --steps 1172 --delta 1e-5
    # σ so that a random search with K ~ Poisson(10), best one released, spends ε ≤ 8 in total:
    python search/privacy.py --sample-rate 0.08192 --steps 875 --delta 1e-5 --target-epsilon 8 \\
        --trials-mean 10 --trials-distribution poisson
    # the same with the distribution of K that needs the least σ (and what each would need):
    python search/privacy.py --sample-rate 0.08192 --steps 875 --delta 1e-5 --target-epsilon 8 \\
        --trials-mean 10 --trials-distribution auto
    # how many composed trials of σ=1.1 fit in ε = 8:
    python search/privacy.py --sample-rate 0.01 --noise-multiplier 1.1 --steps 3000 \\
        --delta 1e-5 --target-epsilon 8
    # ε of a search recorded in an experiment directory (its plan gives mode, δ and K's law):
    python search/privacy.py --ledger runs/my_search
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

from dp_accounting import dp_event

import accounting
from accounting import (
    AUTO,
    SEARCH_MODES,
    TRIAL_DISTRIBUTIONS,
    PrivacyLedger,
    TrialsDistribution,
    max_trials,
    plan_noise_multiplier,
    search_epsilon,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python search/privacy.py",
        description="Plan the privacy cost of a DP hyperparameter search, or compute the ε of "
        "one recorded in a privacy ledger. ε is always an upper bound (RDP or PLD, via "
        "dp_accounting), never rounded down.",
        epilog="Modes: a trial distribution (--trials-mean/--trials-distribution) means random "
        "stopping (Papernot & Steinke 2022: K random trials, only the best released); "
        "--num-trials K means K trials composed (adaptive search, or every result released); "
        "neither means one trial.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mech = parser.add_argument_group("one trial's mechanism (DP-SGD, Poisson sampling)")
    mech.add_argument("--sample-rate", type=float, metavar="Q", help="q = B / N, in (0, 1]")
    mech.add_argument("--noise-multiplier", type=float, metavar="S", help="σ (absent: calibrate)")
    mech.add_argument("--steps", type=int, metavar="T", help="noisy steps per trial")
    parser.add_argument(
        "--delta",
        type=float,
        metavar="D",
        help="δ, e.g. 1e-5 (with --ledger of an experiment directory: read from its plan)",
    )
    parser.add_argument("--accountant", choices=accounting.ACCOUNTANTS, default="rdp")
    parser.add_argument(
        "--target-epsilon",
        type=float,
        metavar="E",
        help="ε budget: calibrates σ when --noise-multiplier is absent (for the whole search "
        "when a search is described); with σ given and no distribution, reports how many "
        "composed trials fit",
    )
    search = parser.add_argument_group("the search")
    search.add_argument("--num-trials", type=int, metavar="K", help="K trials, composed")
    search.add_argument("--trials-mean", type=float, metavar="M", help="E[K] for random stopping")
    search.add_argument(
        "--trials-distribution",
        choices=(AUTO, *TRIAL_DISTRIBUTIONS),
        metavar="DIST",
        help=f"distribution of K: {', '.join(TRIAL_DISTRIBUTIONS)}, or auto: the one needing "
        "the least σ (or giving the least search ε)",
    )
    search.add_argument("--eta", type=float, help="shape η of the negative-binomial")
    search.add_argument("--ledger", metavar="PATH", help="experiment dir or privacy_ledger.jsonl")
    search.add_argument(
        "--search-accounting",
        choices=SEARCH_MODES,
        help="with --ledger: how the recorded trials combine (default composition, or "
        "random-stopping when a distribution is given)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result, lines = _ledger(args) if args.ledger else _plan(args)
    except accounting.AccountingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    if args.json:
        print(json.dumps({k: (None if _inf(v) else v) for k, v in result.items()}))
    return 0


def _inf(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _distribution(args, auto=None) -> TrialsDistribution | None:
    """The distribution of K the flags name; `auto(mean)` picks it for `auto` (planning only)."""
    if args.trials_distribution is None and args.trials_mean is None:
        if args.eta is not None:
            raise accounting.AccountingError("--eta needs --trials-distribution negative-binomial.")
        return None
    if args.trials_distribution is None or args.trials_mean is None:
        raise accounting.AccountingError(
            "random stopping needs both --trials-mean and --trials-distribution."
        )
    if args.num_trials is not None:
        raise accounting.AccountingError(
            "give either --num-trials (composition) or a trial distribution (random stopping)."
        )
    if args.trials_distribution == AUTO:
        if auto is None:
            raise accounting.AccountingError(
                "--trials-distribution auto chooses K's distribution when planning; a recorded "
                "search is read with the one it ran with: drop it."
            )
        if args.eta is not None:
            raise accounting.AccountingError(
                "auto chooses η itself; drop --eta, or name the distribution."
            )
        return auto(args.trials_mean)
    return TrialsDistribution(kind=args.trials_distribution, mean=args.trials_mean, eta=args.eta)


def _choose(args, mean: float, choices: list) -> TrialsDistribution:
    """`auto`: the distribution of K with the least calibrated σ (a budget and no σ), else
    the least search ε for the given trial."""
    q, steps, delta = args.sample_rate, args.steps, args.delta
    if None in (q, steps, delta) or (args.noise_multiplier is None and args.target_epsilon is None):
        raise accounting.AccountingError(
            "auto needs the trial: give --sample-rate, --steps, --delta and --noise-multiplier "
            "(or --target-epsilon to calibrate it)."
        )
    if args.noise_multiplier is None:
        choice = accounting.choose_trials(mean, lambda d: plan_noise_multiplier(
            budget_epsilon=args.target_epsilon, delta=delta, sample_rate=q, steps=steps,
            mode="random-stopping", distribution=d,
        ), measure="σ")  # fmt: skip
    else:
        trial = accounting.dp_sgd_event(
            sample_rate=q, noise_multiplier=args.noise_multiplier, steps=steps
        )
        choice = accounting.choose_trials(
            mean, lambda d: accounting.repeat_and_select_epsilon([trial], distribution=d,
                                                                 delta=delta), measure="ε",
        )  # fmt: skip
    choices.append(choice)
    return choice.chosen


def _eps(value: float) -> str:
    return "∞" if _inf(value) else f"{accounting.round_up(value, 4):g}"


def _plan(args) -> tuple[dict, list[str]]:
    missing = [
        flag
        for flag, value in (
            ("--sample-rate", args.sample_rate), ("--steps", args.steps), ("--delta", args.delta),
        )
        if value is None
    ]  # fmt: skip
    if missing:
        raise accounting.AccountingError(
            f"give {' and '.join(missing)} (or --ledger PATH for a recorded search)."
        )
    if args.noise_multiplier is None and args.target_epsilon is None:
        raise accounting.AccountingError(
            "give --noise-multiplier, or --target-epsilon to calibrate it."
        )
    if args.steps < 1:
        raise accounting.AccountingError(f"--steps must be ≥ 1 (got {args.steps}).")
    choices: list[accounting.TrialsChoice] = []
    distribution = _distribution(args, auto=lambda mean: _choose(args, mean, choices))
    if args.num_trials is not None and args.num_trials < 1:
        raise accounting.AccountingError(f"--num-trials must be ≥ 1 (got {args.num_trials}).")
    mode = "random-stopping" if distribution else "composition" if args.num_trials else "none"
    q, steps, delta = args.sample_rate, args.steps, args.delta
    calibrated = args.noise_multiplier is None
    sigma = args.noise_multiplier
    if calibrated:
        sigma = plan_noise_multiplier(
            budget_epsilon=args.target_epsilon, delta=delta, sample_rate=q, steps=steps,
            mode=mode, num_trials=args.num_trials, distribution=distribution,
            accountant=args.accountant,
        )  # fmt: skip
    trial = accounting.dp_sgd_event(sample_rate=q, noise_multiplier=sigma, steps=steps)
    trial_eps = accounting.epsilon(trial, delta=delta, accountant=args.accountant)
    result = {
        "trial_epsilon": trial_eps,
        "noise_multiplier": sigma,
        "calibrated": calibrated,
        "delta": delta,
        "accountant": args.accountant,
        "mode": mode,
    }
    lines = [
        f"one trial (q={q:g}, σ={sigma:.6g}{' calibrated' if calibrated else ''}, T={steps}): "
        f"ε = {_eps(trial_eps)} at δ={delta:g} ({args.accountant.upper()})"
    ]
    if mode == "none":
        result["epsilon"] = trial_eps
        lines.append("this is ONE run; a search over several runs costs more (see --help).")
        if not calibrated and args.target_epsilon is not None:
            fit = max_trials(
                budget_epsilon=args.target_epsilon, delta=delta, sample_rate=q,
                noise_multiplier=sigma, steps=steps, accountant=args.accountant,
            )  # fmt: skip
            if fit == 0:
                raise accounting.AccountingError(
                    f"one such trial already spends ε = {_eps(trial_eps)} > the budget "
                    f"{args.target_epsilon:g}; raise --noise-multiplier, or lower --steps or "
                    "--sample-rate."
                )
            result["max_trials"] = fit
            lines.append(
                f"a budget of ε={args.target_epsilon:g} allows {fit} such trials, composed."
            )
    else:
        events = [trial] * (args.num_trials or 1)
        search = search_epsilon(
            events, mode=mode, delta=delta, accountant=args.accountant, distribution=distribution
        )
        result.update(
            epsilon=search.epsilon, covers=search.covers, search_accountant=search.accountant
        )
        if distribution:
            result.update(trials_distribution=distribution.kind, trials_mean=distribution.mean,
                          eta=distribution.eta)  # fmt: skip
        else:
            result["num_trials"] = args.num_trials
        if choices:
            result["trials_choice"] = {d.describe(): c for d, c in choices[0].costs}
            lines.append(choices[0].describe() + ".")
        lines.append(
            f"the search: ε = {_eps(search.epsilon)} at δ={delta:g}, covering {search.covers}."
        )
    return result, lines


def _ledger(args) -> tuple[dict, list[str]]:
    given = [
        flag
        for flag, value in (
            ("--sample-rate", args.sample_rate), ("--steps", args.steps),
            ("--noise-multiplier", args.noise_multiplier), ("--num-trials", args.num_trials),
            ("--target-epsilon", args.target_epsilon),
        )
        if value is not None
    ]  # fmt: skip
    if given:
        raise accounting.AccountingError(
            f"--ledger reads the mechanisms that ran; drop {', '.join(given)} (or --ledger to "
            "plan instead)."
        )
    ledger = PrivacyLedger(args.ledger)
    if not ledger.path.exists():
        raise accounting.AccountingError(
            f"no privacy ledger at {ledger.path}; pass an experiment directory or the "
            "privacy_ledger.jsonl file itself."
        )
    records = ledger.records()
    accounts = accounting.reduce_ledger(records)
    directory = ledger.path.parent
    if (directory / accounting.PLAN_FILENAME).exists():
        plan = accounting.SearchPrivacyPlan.load(directory)
        _refuse_contradictions(args, plan)
        if plan.mode == "none":  # as the results layer: a search ε always covers the search
            plan = dataclasses.replace(plan, mode="composition")
        search = plan.search_epsilon(accounts)
        source = f"the plan in {directory / accounting.PLAN_FILENAME}"
    else:
        if args.delta is None:
            raise accounting.AccountingError(
                f"{ledger.path} has no search.json beside it; give --delta (and the search's "
                "accounting flags) to read it."
            )
        distribution = _distribution(args)
        mode = args.search_accounting or ("random-stopping" if distribution else "composition")
        search = search_epsilon(
            [a.train for a in accounts.values()], mode=mode, delta=args.delta,
            accountant=args.accountant, distribution=distribution,
        )  # fmt: skip
        validation = accounting.parallel_search_curve(
            [accounting.ParallelCurve.of(dp_event.NoOpDpEvent(), a.validation)
             for a in accounts.values()], mode=mode, distribution=distribution,
        ).epsilon(args.delta)  # fmt: skip
        if validation > search.epsilon:  # the noisy validation scores, in parallel
            search = dataclasses.replace(search, epsilon=validation, accountant="rdp")
        source = "the flags given (no search.json beside the ledger)"
    counts: dict[str, int] = {}
    for account in accounts.values():
        counts[account.status] = counts.get(account.status, 0) + 1
    counts = dict(sorted(counts.items()))
    result = {
        "epsilon": search.epsilon,
        "spent_epsilon": search.spent,
        "trial_epsilon": search.max_trial_epsilon,
        "delta": search.delta,
        "accountant": search.accountant,
        "mode": search.mode,
        "covers": search.covers,
        "num_trials": search.num_trials,
        "trial_status": counts,
    }
    lines = [
        f"{ledger.path}: {search.num_trials} trials ("
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"), largest single-trial ε = {_eps(search.max_trial_epsilon)}",
        f"the search: ε = {_eps(search.epsilon)} at δ={search.delta:g} "
        f"({search.accountant.upper()}, from {source}), covering {search.covers}.",
    ]
    if search.spent is not None:
        lines.append(
            f"spent so far (analyst-only, from the ledger): ε = {_eps(search.spent)}"
            + (" — MORE than the plan allowed" if search.exceeded else "")
            + "."
        )
    return result, lines


def _refuse_contradictions(args, plan: accounting.SearchPrivacyPlan) -> None:
    """Flags that would account the recorded search differently from how it was planned."""
    checks = [
        ("--delta", args.delta, plan.delta),
        ("--search-accounting", args.search_accounting, plan.mode),
        ("--trials-distribution", args.trials_distribution, plan.trials_distribution),
        ("--trials-mean", args.trials_mean, plan.trials_mean),
        ("--eta", args.eta, plan.eta),
    ]
    for flag, given, planned in checks:
        if given is not None and given != planned:
            raise accounting.AccountingError(
                f"{flag} {given} contradicts the experiment's plan ({planned}); drop it: the "
                "ledger is read with the plan it was recorded under."
            )
    if args.accountant != "rdp":
        raise accounting.AccountingError(
            "a search's ε is accounted with RDP (parallel composition and random stopping need "
            "it); drop --accountant."
        )


if __name__ == "__main__":
    sys.exit(main())
