"""`tqsim check`: is this machine now as it was when calibrated?"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tqsim.cli.common import app, Debug, Home, Json, Seed, System, WorkloadOpt, console, emit_json, split_list


@app.command()
def check(
    anchor: Annotated[Optional[list[str]], typer.Option(
        "--anchor", help="A calibrated configuration to measure, e.g. bs1-th1-fp32-torch-cpu (repeatable; "
                         "default: the cheapest one per thread count, at most two).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Check even if this machine's fingerprint differs from "
                                                        "the calibration's.")] = False,
    home: Home = None, system: System = None, workload: WorkloadOpt = None, json_out: Json = False,
    seed: Seed = None, debug: Debug = False,
) -> None:
    """Measure one or two calibrated anchors for ~10 s and say how the machine's speed compares with the
    calibration; `tqsim predict --now` then conditions on it."""
    import datetime as _dt
    import json

    import numpy as np

    from tqsim.data.io import calibration_files, read_calibration
    from tqsim.data.workspace import Workspace, workload_name_of
    from tqsim.drift import anchor_offsets, describe, sentence
    from tqsim.errors import UserError
    from tqsim.factors import parse_config_id
    from tqsim.measure.check import cheapest, measure_anchors, save_check
    from tqsim.measure.fingerprint import fingerprint, fingerprint_mismatch
    from tqsim.models import load
    from tqsim.workloads import BUILTINS, get_workload
    from tqsim.workloads.files import is_file_spec

    ws = Workspace.at(home)
    sys_name = ws.resolve_system(system)
    wl_name = ws.resolve_workload(sys_name, workload)
    model_path = ws.model_path(sys_name, wl_name)
    if not model_path.exists():
        raise UserError(f"no fitted model of {wl_name} on {sys_name}; run `tqsim fit` first (a check compares the "
                        "machine with the fitted calibration).")
    fm = load(model_path, workload=wl_name, system=sys_name)
    spec = workload or wl_name
    files = {p.stem: p for p in calibration_files(ws.calibration_dir(sys_name, wl_name))}
    source = _recorded_source(files.values())
    if source is None and spec not in BUILTINS and ":" not in spec:
        raise UserError(f"{wl_name} is a user workload: name its factory, e.g. --workload path/to/file.py:factory.")
    fitted = [parse_config_id(c["id"]) for c in fm.configs]
    if anchor:
        chosen = []
        for text in split_list(anchor):
            cfg = parse_config_id(text)
            if cfg.id not in {c.id for c in fitted}:
                raise UserError(f"--anchor {text}: not a calibrated configuration of the fit; choose one of "
                                f"{', '.join(c.id for c in fitted)}.")
            chosen.append(cfg)
    else:
        pass_s = {}
        for c in fitted:
            lat = read_calibration(files[c.id])["latency_s"].values if c.id in files else None
            pass_s[c.id] = float(np.nanmedian(lat.sum(axis=1) / c.batch_size)) if lat is not None else np.inf
        chosen = cheapest(fitted, pass_s)
    cal_fp = json.loads(str(read_calibration(files[chosen[0].id]).attrs.get("fingerprint", "{}")))
    mismatch = fingerprint_mismatch(cal_fp, fingerprint())
    if mismatch and not force:
        raise UserError(f"this is not the calibrated machine ({mismatch}); calibrate this one, or pass --force.")
    if source is not None and (workload is None or is_file_spec(workload)):
        wl = get_workload(source["spec"], source["data"])  # the files the calibration recorded, no --data retyped
        calibrated = str(read_calibration(files[chosen[0].id]).attrs.get("model_digest", ""))
        if calibrated and wl.digest != calibrated:
            raise UserError(f"{source['model']} changed since it was calibrated; recalibrate it (calibrate --fresh) "
                            "before checking the machine with it.")
    else:
        wl = get_workload(spec)
    if workload_name_of(spec) != wl_name and wl.name != wl_name:
        raise UserError(f"--workload {spec} is not the calibrated workload {wl_name}.")
    from tqsim.measure.campaign import set_torch_threads  # noqa: F401  (torch is needed from here on)

    show = not json_out
    if show:
        console(stderr=True).print(f"[dim]measuring {', '.join(c.id for c in chosen)} for about 10 s[/dim]")
    anchors = measure_anchors(wl, chosen)
    record = {"system": sys_name, "workload": wl_name, "seed": seed,
              "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "fingerprint_mismatch": mismatch, "anchors": anchors}
    delta = anchor_offsets(fm, [(parse_config_id(a["config_id"]), a["levels"]) for a in anchors],
                           n_draws=400, seed=seed or 0)
    result = describe(delta, fm)
    record["result"] = result
    path = save_check(ws, sys_name, wl_name, record)
    out = {"system": sys_name, "workload": wl_name, "check": str(path), "created_at": record["created_at"],
           "anchors": [{"config_id": a["config_id"], "passes": len(a["levels"])} for a in anchors], **result}
    if json_out:
        emit_json(out)
        return
    c = console()
    c.print(sentence(result))
    c.print(f"stored in {path}; `tqsim predict --now ...` conditions forecasts on it.")


def _recorded_source(paths) -> dict | None:
    """The model-file source a calibration recorded (tqsim/workloads/files.py), or None for other workloads."""
    import json

    from tqsim.data.io import read_calibration
    from tqsim.measure.campaign import SOURCE_ATTR

    for p in paths:
        text = read_calibration(p).attrs.get(SOURCE_ATTR)
        if text:
            return json.loads(str(text))
    return None
