"""The OpenAPI 3.1 document of the JSON endpoints (``GET /openapi.json``).

Written by hand, not generated: the routes are answered by our own HTTP layer, not a
framework that could derive it. A test checks the document against the OpenAPI schema and
that every path in it is routed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "An error, with a message saying what to fix.")
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_TIMEOUT = {
    "name": "timeout_ms",
    "in": "query",
    "required": False,
    "description": "This request's deadline in milliseconds (default: the server's).",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _ERROR for c in codes}


def _infer(with_version: bool) -> dict[str, Any]:
    params = [_MODEL, _VERSION] if with_version else [_MODEL]
    return {
        "post": {
            "summary": "Predict (Open Inference Protocol v2)",
            "parameters": [*params, _TIMEOUT],
            "requestBody": {"required": True, **_json(_ref("InferRequest"), "Input tensors.")},
            "responses": {
                "200": _json(_ref("InferResponse"), "Output tensors, one per output column."),
                **_errors(400, 401, 404, 413, 429, 503, 504),
            },
        }
    }


def _model_get(
    with_version: bool, summary: str, schema: dict[str, Any], what: str
) -> dict[str, Any]:
    params = [_MODEL, _VERSION] if with_version else [_MODEL]
    return {
        "get": {
            "summary": summary,
            "parameters": params,
            "responses": {"200": _json(schema, what), **_errors(404, 503)},
        }
    }


def _metadata(with_version: bool) -> dict[str, Any]:
    return _model_get(
        with_version,
        "Model metadata: the Bundle's signature",
        _ref("ModelMetadata"),
        "Inputs and outputs.",
    )


def _model_ready(with_version: bool) -> dict[str, Any]:
    return _model_get(
        with_version, "Whether the model is loaded and warm", {"type": "object"}, "Ready."
    )


def openapi_document(version: str, models: list[str]) -> dict[str, Any]:
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {
                "type": "string",
                "enum": [
                    "BOOL",
                    "UINT8",
                    "UINT16",
                    "UINT32",
                    "UINT64",
                    "INT8",
                    "INT16",
                    "INT32",
                    "INT64",
                    "FP16",
                    "FP32",
                    "FP64",
                    "BYTES",
                ],
            },
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }
    rows_or_columns = {
        "oneOf": [
            {"type": "array", "items": {"oneOf": [{"type": "object"}, {"type": "array"}, {}]}},
            {"type": "object", "additionalProperties": {"type": "array"}},
        ]
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tandem model server",
            "version": version,
            "description": "Serves the models " + ", ".join(models) + " over the Open Inference "
            "Protocol v2 and the MLflow / SageMaker scoring protocol.",
        },
        "paths": {
            "/v2/health/live": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": _json({"type": "object"}, "Live.")},
                }
            },
            "/v2/health/ready": {
                "get": {
                    "summary": "Readiness: every model loaded and warm",
                    "responses": {"200": _json({"type": "object"}, "Ready."), **_errors(503)},
                }
            },
            "/v2": {
                "get": {
                    "summary": "Server metadata",
                    "responses": {
                        "200": _json(_ref("ServerMetadata"), "Name, version, extensions.")
                    },
                }
            },
            "/v2/models/{model}": _metadata(False),
            "/v2/models/{model}/versions/{version}": _metadata(True),
            "/v2/models/{model}/ready": _model_ready(False),
            "/v2/models/{model}/versions/{version}/ready": _model_ready(True),
            "/v2/models/{model}/infer": _infer(False),
            "/v2/models/{model}/versions/{version}/infer": _infer(True),
            "/ping": {
                "get": {
                    "summary": "SageMaker health check",
                    "responses": {"200": _json({"type": "object"}, "Ready."), **_errors(503)},
                }
            },
            "/invocations": {
                "post": {
                    "summary": "Predict (MLflow / SageMaker scoring protocol)",
                    "parameters": [
                        {
                            "name": "model",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Which model, when the server serves several.",
                        },
                        _TIMEOUT,
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("ScoringRequest")},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "200": _json(_ref("Predictions"), "One record per row."),
                        **_errors(400, 401, 404, 413, 415, 429, 503, 504),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "error_code": {"type": "string"},
                    },
                },
                "ServerMetadata": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "extensions": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "TensorMetadata": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                    },
                },
                "ModelMetadata": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "string"}},
                        "platform": {"type": "string"},
                        "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                        "outputs": {"type": "array", "items": _ref("TensorMetadata")},
                    },
                },
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {"timeout_ms": {"type": "number"}},
                        },
                        "inputs": {"type": "array", "minItems": 1, "items": tensor},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                },
                "InferResponse": {
                    "type": "object",
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": tensor},
                    },
                },
                "ScoringRequest": {
                    "type": "object",
                    "description": "Exactly one of the four forms.",
                    "properties": {
                        "dataframe_split": {
                            "type": "object",
                            "properties": {
                                "columns": {"type": "array", "items": {"type": "string"}},
                                "data": {"type": "array", "items": {"type": "array"}},
                            },
                        },
                        "dataframe_records": {"type": "array", "items": {"type": "object"}},
                        "instances": rows_or_columns,
                        "inputs": rows_or_columns,
                        "params": {
                            "type": "object",
                            "properties": {"timeout_ms": {"type": "number"}},
                        },
                    },
                },
                "Predictions": {
                    "type": "object",
                    "properties": {"predictions": {"type": "array", "items": {"type": "object"}}},
                },
            }
        },
    }
