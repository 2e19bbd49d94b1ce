"""Plain FastAPI: the same work as the bare ASGI app, written the way a FastAPI user would.

A pydantic model of the Open Inference Protocol v2 request validates the body; the endpoint
is ``async def`` (runs on the event loop, like the bare app: no thread pool hop) and returns a
dict, which FastAPI encodes with its default JSONResponse. Serve with::

    uvicorn serving_baselines.fastapi_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from serving_baselines._models import load_models

MODELS = load_models()


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[InferInput]
    id: str | None = None


app = FastAPI()


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: InferRequest) -> Any:
    model = MODELS.get(name)
    if model is None:
        raise HTTPException(status_code=404, detail=f"unknown model {name}")
    tensor = request.inputs[0]
    if len(tensor.shape) != 2 or tensor.shape[1] != model.n_features:
        raise HTTPException(status_code=400, detail=f"expected shape [n, {model.n_features}]")
    matrix = np.array(tensor.data, dtype=np.float64).reshape(tensor.shape)
    probabilities = model.run(matrix)
    return {
        "model_name": name,
        "outputs": [
            {
                "name": "probabilities",
                "shape": list(probabilities.shape),
                "datatype": "FP64",
                "data": probabilities.ravel().tolist(),
            }
        ],
    }
