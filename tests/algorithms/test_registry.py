"""The registry: one class per --algorithm, and no algorithm name compared anywhere else in the package."""
import re
from pathlib import Path

import pytest

from fastalign.algorithms import ALGORITHMS, Algorithm, algorithm_class, build_algorithm
from fastalign.config import ConfigError, RunConfig

PACKAGE = Path(__file__).resolve().parents[2] / "fastalign"


def test_every_algorithm_is_a_registered_subclass_with_a_paper():
    for name, cls in ALGORITHMS.items():
        assert issubclass(cls, Algorithm) and cls.name == name and cls.paper


def test_unknown_algorithm_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="unknown algorithm 'ppo': choose one of online-dpo, offline-dpo"):
        algorithm_class("ppo")
    with pytest.raises(ConfigError, match="unknown algorithm 'ppo'"):
        RunConfig(algorithm="ppo").validate()


def test_no_module_outside_the_registry_compares_algorithm_names():
    names = "|".join(re.escape(n) for n in ALGORITHMS)
    quoted = re.compile(rf"""["']({names})["']""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "algorithms" in path.relative_to(PACKAGE).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if quoted.search(code) and "algorithm: str =" not in code:  # RunConfig's default is allowed
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
            if re.search(r"\.algorithm\s*(==|!=|\bin\b)", code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "sail-dp"])
def test_every_algorithm_builds_from_the_default_config(name):
    algorithm = build_algorithm(RunConfig(algorithm=name).validate())
    assert algorithm.updates >= 1 and algorithm.state_dict()["name"] == name


def test_updates_per_round_overrides_the_algorithms_own():
    assert build_algorithm(RunConfig(algorithm="bpo")).updates == 4
    assert build_algorithm(RunConfig(updates_per_round=3).validate()).updates == 3
    with pytest.raises(ConfigError, match="updates_per_round must be ≥ 1"):
        RunConfig(updates_per_round=0).validate()
