"""What goes over the wire between the HTTP driver and a server in the loop: request bodies and answers.

Two protocols. ``json``: ``{"index": i, "instance": [input, ...]}``, one nested list per forward argument of the
instance (the workload's ``collate`` of a batch of one, batch axis dropped), answered by ``{"prediction": class,
"tqsim": {...}}``. ``v2``: the Open Inference Protocol (Triton, KServe, MLServer), ``POST /v2/models/<name>/infer``
with ``{"id", "inputs": [{"name", "shape", "datatype", "data"}]}`` (shape with the batch axis of 1, data flat),
answered by ``{"outputs": [{"data": [...]}]}`` (a class, or the scores of one instance). Both sides live here so
that tqsim's driver and tqsim's server agree by construction.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tqsim.errors import UserError

PROTOCOLS = ("json", "v2")
V2_DATATYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
                "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
NUMPY_DTYPES = {v: k for k, v in V2_DATATYPES.items()}


def resolve_protocol(protocol: str, path: str) -> str:
    """``auto`` is v2 when the URL path is an OIP v2 inference path (``/v2/models/...``), else json."""
    if protocol == "auto":
        return "v2" if "/v2/models/" in path else "json"
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol '{protocol}'; choose auto, json or v2.")
    return protocol


def instance_arrays(workload: Any, i: int) -> list[np.ndarray]:
    """The forward arguments of instance ``i`` alone, batch axis dropped, as NumPy arrays."""
    args = workload.collate(workload.inputs, np.array([i]))
    args = args if isinstance(args, (tuple, list)) else (args,)
    return [np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)[0] for a in args]


def request_body(workload: Any, i: int, protocol: str) -> bytes:
    """The body that asks for instance ``i`` of ``workload``."""
    rows = instance_arrays(workload, i)
    if protocol == "json":
        return json.dumps({"index": int(i), "instance": [r.tolist() for r in rows]}).encode()
    inputs = [{"name": f"input_{k}", "shape": [1, *r.shape], "datatype": _v2_datatype(r.dtype),
               "data": r.ravel().tolist()} for k, r in enumerate(rows)]
    return json.dumps({"id": str(int(i)), "inputs": inputs}).encode()


def _v2_datatype(dtype: np.dtype) -> str:
    try:
        return V2_DATATYPES[np.dtype(dtype).name]
    except KeyError:
        raise UserError(f"inputs of dtype {dtype} have no Open Inference Protocol datatype; use protocol json.") \
            from None


def parse_request(obj: dict) -> tuple[int | None, list[np.ndarray] | None, str]:
    """A server's view of one body: (instance index or None, its forward arguments or None, protocol)."""
    if not isinstance(obj, dict):
        raise ValueError("the body must be a JSON object")
    if "inputs" in obj:  # OIP v2
        rows = [np.asarray(t["data"], NUMPY_DTYPES[t["datatype"]]).reshape(t["shape"])[0] for t in obj["inputs"]]
        rid = obj.get("id")
        index = obj.get("parameters", {}).get("index", rid if isinstance(rid, str) and rid.isdigit() else None)
        return (None if index is None else int(index)), rows, "v2"
    rows = obj.get("instance")
    index = obj.get("index")
    if rows is None and index is None:
        raise ValueError('give "index" (an instance of the served workload) and/or "instance" (its inputs)')
    return (None if index is None else int(index)), (None if rows is None else [np.asarray(r) for r in rows]), \
        "json"


def answer(prediction: int, meta: dict, protocol: str, request_id: int | None = None) -> dict:
    """A server's answer to one request: its predicted class and the ``tqsim`` block (batch, replica, forward)."""
    if protocol == "v2":
        out = {"model_name": "tqsim", "outputs": [{"name": "prediction", "shape": [1], "datatype": "INT64",
                                                  "data": [int(prediction)]}], "tqsim": meta}
        if request_id is not None:
            out["id"] = str(request_id)
        return out
    return {"prediction": int(prediction), "tqsim": meta}


def read_answer(body: bytes) -> tuple[int | None, dict]:
    """A driver's view of one answer: (predicted class or None, the ``tqsim`` block or {})."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None, {}
    if not isinstance(obj, dict):
        return None, {}
    meta = obj.get("tqsim") or obj.get("parameters", {}).get("tqsim") or {}
    pred = obj.get("prediction")
    if pred is None and obj.get("outputs"):
        data = np.asarray(obj["outputs"][0].get("data", []), float).ravel()
        pred = None if data.size == 0 else (data[0] if data.size == 1 else int(data.argmax()))
    try:
        return (None if pred is None else int(pred)), (meta if isinstance(meta, dict) else {})
    except (TypeError, ValueError):
        return None, {}
