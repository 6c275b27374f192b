"""Plans and network topology (``multitalent.preprocessing.plans``)."""

from multitalent.preprocessing.plans import Plans, derive_topology


def test_paper_topology():
    t = Plans().topology
    assert t.features_per_stage == [32, 64, 128, 256, 320, 320]
    assert t.strides[-1] == [1, 2, 2]
    small = derive_topology((32, 64, 64), (4.0, 4.0, 4.0))
    assert small.features_per_stage[0] == 32 and small.n_stages == 5
