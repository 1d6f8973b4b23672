"""Config strings build the objects they name, and reject anything else by name."""

import pytest

import diffjax as dj


def test_specs_build_solvers_schedules_and_grids():
    sched = dj.specs.parse("schedule", "edm(sigma_max=40.0)", dj.schedules.REGISTRY)()
    assert sched.t_max == 40.0
    ts = dj.specs.parse("grid", "karras(rho=3.0)", dj.timesteps.REGISTRY)(sched, 5)
    assert ts.shape == (6,) and abs(float(ts[0]) - 40.0) < 1e-12
    assert isinstance(dj.specs.parse("solver", "ddim", dj.solvers.REGISTRY)(), dj.Solver)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("ddim(0.5)", "must look like"),
        ("ddim(eta=x)", "must look like"),
        ("ddim(eta=", "must look like"),
        ("heun_9", "must name one of"),
        ("ddim(eta=3.0)", "eta"),
    ],
)
def test_bad_specs_raise_value_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        dj.specs.parse("config.solver", spec, dj.solvers.REGISTRY)()
