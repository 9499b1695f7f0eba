import pytest

from fedsim.clock import Clock


def test_pops_in_time_then_priority_then_insertion_order():
    c = Clock()
    c.push(5.0, "late")
    c.push(1.0, "b", priority=1)
    c.push(1.0, "a", priority=0)
    c.push(1.0, "b2", priority=1)
    assert [c.pop()[1] for _ in range(4)] == ["a", "b", "b2", "late"]
    assert c.now == 5.0


def test_no_events_in_the_past_and_clear():
    c = Clock(10.0)
    with pytest.raises(ValueError):
        c.push(9.0, "x")
    c.push(11.0, "x")
    c.clear(10.5)
    assert len(c) == 0 and c.now == 10.5


def test_state_roundtrip_continues_identically():
    a = Clock()
    for i, t in enumerate([3.0, 1.0, 2.0, 1.0]):
        a.push(t, i)
    a.pop()
    b = Clock.from_state(a.state())
    b.push(2.0, "new")
    a.push(2.0, "new")
    assert [a.pop() for _ in range(4)] == [b.pop() for _ in range(4)]
