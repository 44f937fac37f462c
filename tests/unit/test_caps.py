from pathlib import Path

from haagent import caps

STATUS = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{:016x}\n"


def test_all_needed_capabilities_present(tmp_path: Path):
    f = tmp_path / "status"
    f.write_text(STATUS.format(1 << caps.CAP_NET_ADMIN | 1 << caps.CAP_NET_RAW))
    assert caps.check(f) is None


def test_a_missing_capability_is_one_line_naming_it_and_the_fix(tmp_path: Path):
    f = tmp_path / "status"
    f.write_text(STATUS.format(1 << caps.CAP_NET_ADMIN))
    problem = caps.check(f)
    assert problem is not None and "\n" not in problem
    assert "CAP_NET_RAW" in problem and "CAP_NET_ADMIN (" not in problem
    assert "AmbientCapabilities" in problem


def test_unreadable_or_odd_status_says_nothing(tmp_path: Path):
    assert caps.check(tmp_path / "absent") is None
    f = tmp_path / "status"
    f.write_text("CapEff:\tzz\n")
    assert caps.check(f) is None
