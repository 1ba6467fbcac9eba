"""Service names of odd cgroup directories, and the pressure and throttling of a service whose
name several cgroups share (beside tests/test_cgroups.py)."""

import pytest

from gsender_bcc.cgroups import CgroupTree, PressureReader, service_name, user_service_name


class TestPressureOfServicesWithSeveralDirectories:
    """Two cgroups named ``web`` (one in each of two slices): the worst pressure of the two,
    never their sum, and the throttling summed; a share of the interval is at most 100 %."""

    @pytest.fixture
    def reader_and_write(self, tmp_path):
        folders = [tmp_path / "a.slice/web.service", tmp_path / "b.slice/web.service"]
        for folder in folders:
            folder.mkdir(parents=True)
        tree = CgroupTree(tmp_path)
        tree.walk()
        assert sorted(tree.directories("web")) == folders

        def write(folder, pressure_us, throttled_us):
            (folder / "cpu.pressure").write_text(
                f"some avg10=0.00 avg60=0.00 avg300=0.00 total={pressure_us}\n"
                f"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
            (folder / "cpu.stat").write_text(f"usage_usec 9\nthrottled_usec {throttled_us}\n")
        return PressureReader(tree), folders, write

    def test_the_worst_pressure_and_the_summed_throttling(self, reader_and_write):
        reader, (a, b), write = reader_and_write
        write(a, 1_000_000, 20_000)
        write(b, 0, 1_000)
        assert reader.read(["web"], 5.0) == {}
        write(a, 1_500_000, 65_000)  # 0.5 s of the 5 s: 10 %
        write(b, 250_000, 6_000)     # 5 %
        assert reader.read(["web"], 5.0) == {"web": {"pressure": 10.0, "throttled_ms": 50.0}}

    def test_a_counter_that_went_back_gives_no_figure_until_the_next_reading(self,
                                                                            reader_and_write):
        """A service's directory replaced by a new one (its counters start again): that
        interval has no pressure figure, never a negative one; the next has one again."""
        reader, (a, b), write = reader_and_write
        write(a, 1_000_000, 0)
        write(b, 0, 0)
        reader.read(["web"], 5.0)
        write(a, 500_000, 0)
        assert "pressure" not in reader.read(["web"], 5.0).get("web", {})
        write(a, 750_000, 0)
        assert reader.read(["web"], 5.0)["web"]["pressure"] == 5.0

    def test_pressure_is_at_most_100_percent(self, reader_and_write):
        reader, (a, b), write = reader_and_write
        write(a, 0, 0)
        write(b, 0, 0)
        reader.read(["web"], 5.0)
        write(a, 6_000_000, 0)  # 6 s of stall in an interval measured as 5 s (clock skew)
        assert reader.read(["web"], 5.0)["web"]["pressure"] == 100.0


@pytest.mark.parametrize("path, name", [("/system.slice/.service", "_service"),
                                        ("/.service/worker", "_service")])
def test_a_directory_named_only_dot_service_keeps_a_name(path, name):
    assert service_name(path) == name
    assert user_service_name(1000, path) == f"user-1000_{name}"
