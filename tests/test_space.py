import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbopt import Categorical, Float, Int, Space, SpaceError


@st.composite
def param_and_value(draw):
    kind = draw(st.sampled_from(["float", "int", "cat"]))
    log = draw(st.booleans())
    if kind == "float":
        low = draw(st.floats(1e-6, 1e3) if log else st.floats(-1e6, 1e6))
        high = low + draw(st.floats(1e-3, 1e6))
        p = Float(low, high, log=log)
        v = draw(st.floats(p.low, p.high))
    elif kind == "int":
        low = draw(st.integers(1, 1000) if log else st.integers(-10**6, 10**6))
        high = low + draw(st.integers(1, 10**6))
        p = Int(low, high, log=log)
        v = draw(st.integers(p.low, p.high))
    else:
        scalars = st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.none(),
                            st.floats(allow_nan=False, allow_infinity=False))
        choices = draw(st.lists(scalars, min_size=1, max_size=8, unique_by=lambda c: (type(c), c)))
        p = Categorical(choices)
        v = draw(st.sampled_from(p.choices))
    return p, v


@settings(max_examples=300, deadline=None)
@given(st.lists(param_and_value(), min_size=1, max_size=6))
def test_decode_encode_round_trip(pvs):
    space = Space({f"p{i}": p for i, (p, _) in enumerate(pvs)})
    params = {f"p{i}": v for i, (_, v) in enumerate(pvs)}
    u = space.encode(params)
    assert np.all((u >= 0) & (u <= 1))
    back = space.decode(u)
    for k, v in params.items():
        if isinstance(space.params[k], Float):
            assert back[k] == pytest.approx(v, rel=1e-9, abs=1e-9)
        else:
            assert back[k] == v and type(back[k]) is type(v)


@settings(max_examples=200, deadline=None)
@given(st.lists(param_and_value(), min_size=1, max_size=6), st.data())
def test_decode_lands_in_space(pvs, data):
    space = Space({f"p{i}": p for i, (p, _) in enumerate(pvs)})
    u = data.draw(st.lists(st.floats(0, 1), min_size=space.dim, max_size=space.dim))
    params = space.decode(u)
    assert space.validate(params) == params


def test_int_bins_are_equal():
    p = Int(1, 4)
    counts = np.bincount([p.decode(u) for u in np.linspace(0, 1, 4001)[:-1]])[1:]
    assert counts.tolist() == [1000] * 4


def test_log_float_is_linear_in_log_space():
    p = Float(1e-4, 1e-0, log=True)
    assert (p.decode(0.0), p.decode(1.0), p.decode(-0.5)) == (1e-4, 1.0, 1e-4)
    assert p.decode(0.5) == pytest.approx(1e-2)
    assert p.encode(1e-3) == pytest.approx(0.25)


def test_categorical_decodes_deterministically_and_keeps_types():
    p = Categorical([1, True, "1", 1.5])
    assert [p.decode(u) for u in (0.0, 0.3, 0.6, 0.99, 1.0)] == [1, True, "1", 1.5, 1.5]
    assert p.encode(True) == pytest.approx(0.375)


@pytest.mark.parametrize(
    "make, msg",
    [
        (lambda: Float(1, 1), "low < high"),
        (lambda: Float(2, 1), "low < high"),
        (lambda: Float(0, 1, log=True), "low > 0"),
        (lambda: Float(0, math.inf), "finite"),
        (lambda: Float("a", 1), "numbers"),
        (lambda: Int(3, 3), "low < high"),
        (lambda: Int(0, 5, log=True), "low > 0"),
        (lambda: Int(0.5, 5), "integers"),
        (lambda: Categorical([]), "at least one"),
        (lambda: Categorical("abc"), "list of choices"),
        (lambda: Categorical(["a", "a"]), "unique"),
        (lambda: Categorical([[1]]), "str, number"),
        (lambda: Space({}), "non-empty"),
        (lambda: Space({"x": {"type": "floaty", "low": 0, "high": 1}}), "'type' must be"),
        (lambda: Space({"x": {"type": "float", "low": 0}}), "high"),
        (lambda: Space({"x": {"type": "float", "low": 0, "high": 1, "step": 2}}), "unknown keys"),
    ],
)
def test_invalid_definitions(make, msg):
    with pytest.raises(SpaceError, match=msg):
        make()


SPACE = Space({"lr": Float(1e-5, 1e-1, log=True), "layers": Int(1, 4),
               "act": Categorical(["relu", "tanh"])})


@pytest.mark.parametrize(
    "params, msg",
    [
        ({"lr": 1e-3, "layers": 2}, "missing"),
        ({"lr": 1e-3, "layers": 2, "act": "relu", "x": 1}, "unknown parameter"),
        ({"lr": 1.0, "layers": 2, "act": "relu"}, "outside"),
        ({"lr": float("nan"), "layers": 2, "act": "relu"}, "outside"),
        ({"lr": "0.1", "layers": 2, "act": "relu"}, "must be a number"),
        ({"lr": 1e-3, "layers": 2.5, "act": "relu"}, "integer"),
        ({"lr": 1e-3, "layers": 9, "act": "relu"}, "outside"),
        ({"lr": 1e-3, "layers": True, "act": "relu"}, "integer"),
        ({"lr": 1e-3, "layers": 2, "act": "gelu"}, "not one of"),
        ([1, 2, 3], "must be a dict"),
    ],
)
def test_validate_rejects(params, msg):
    with pytest.raises(SpaceError, match=msg):
        SPACE.validate(params)


def test_decode_rejects_wrong_shape_and_nan():
    with pytest.raises(SpaceError, match="shape"):
        SPACE.decode([0.5, 0.5])
    with pytest.raises(SpaceError, match="non-finite"):
        SPACE.decode([0.5, float("nan"), 0.5])


def test_json_and_yaml_files(tmp_path):
    design = {"lr": {"type": "float", "low": 1e-5, "high": 0.1, "log": True},
              "layers": {"type": "int", "low": 1, "high": 4},
              "act": {"type": "categorical", "choices": ["relu", "tanh"]}}
    (tmp_path / "s.json").write_text(json.dumps(design))
    assert Space.load(tmp_path / "s.json") == SPACE
    SPACE.dump(tmp_path / "s.yaml")
    assert Space.load(tmp_path / "s.yaml") == SPACE
    SPACE.dump(tmp_path / "t.json")
    assert Space.load(tmp_path / "t.json") == SPACE
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SpaceError, match="not valid JSON"):
        Space.load(tmp_path / "bad.json")
    with pytest.raises(SpaceError, match="cannot read"):
        Space.load(tmp_path / "missing.json")


def test_snap_is_encode_of_decode_for_many_points():
    space = Space({"lr": Float(1e-4, 1.0, log=True), "n": Int(1, 9), "m": Int(2, 300, log=True),
                   "act": Categorical(["relu", "tanh", "gelu"])})
    U = np.random.default_rng(0).random((200, 4))
    U[:3] = [[0, 0, 0, 0], [1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5]]
    got = space.snap(U)
    want = np.array([space.encode(space.decode(u)) for u in U])
    assert np.allclose(got, want, atol=1e-12)
    assert np.allclose(space.snap(got), got, atol=1e-12)  # idempotent
    assert np.allclose(space.snap(U[None])[0], got)  # any leading shape
    assert not space.continuous and Space({"a": Float(0, 1)}).continuous
    with pytest.raises(SpaceError, match="shape"):
        space.snap(np.zeros((3, 2)))
