"""The resident categoriser's JSON, written and read by its server and its client alike.

POST /v1/categorize  {"texts": ["titulo. resumen", ...]}
200                  {"results": [RESULT, ...], "model": "...", "adapter": "..." | null}
RESULT               {"categoria": "Deportes", "confianza": 0.93, "probabilities": {...}}
                     or {"error": "the item has neither titulo nor resumen"}
"""

from __future__ import annotations

from . import CategorizationError, Prediction

CATEGORIZE_PATH = "/v1/categorize"
TOKEN_VARIABLE = "NEWSLLM_CATEGORIZER_TOKEN"


def result_body(result: Prediction | CategorizationError) -> dict:
    if isinstance(result, CategorizationError):
        return {"error": str(result)}
    return {"categoria": result.categoria, "confianza": result.confianza, "probabilities": result.probabilities}


def result_from_body(body: dict) -> Prediction | CategorizationError:
    if "error" in body:
        return CategorizationError(body["error"])
    return Prediction(body["categoria"], body["confianza"], body.get("probabilities", {}))
