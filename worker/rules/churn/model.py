"""The churn models' names, the population parameters and a stored fit. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from worker.rules.churn.prediction import Predictor
from worker.rules.churn.spend import SpendFit

ChurnModel = Literal["bgnbd", "mbgnbd"]
CHURN_MODELS: tuple[ChurnModel, ...] = ("bgnbd", "mbgnbd")


@dataclass(frozen=True, slots=True)
class Params:
    """The four population parameters; α in the time unit of the data fitted (days here)."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True, slots=True)
class Fit:
    """One fit of a profile's model, stored versioned like quantile cut points."""

    model: ChurnModel
    params: Params
    log_likelihood: float  # total over the customers fitted (not the mean)
    population: int  # customers with a counted order (estimated when sampled)
    sampled: int  # customers fitted
    version: int  # 1, 2, ... per profile: each fit stores the next
    fitted_at: int  # epoch ms, on the worker's clock; the customers' T are as of then
    # The spend model fitted with it (profiles with a value model); None without one or
    # when its fit failed. Stored under "spend"; fits stored before it load with None.
    spend: SpendFit | None = None
    # Its formulas per customer, with the terms of the fit computed once (prediction.py).
    predictor: Predictor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "predictor", Predictor(self.model, self.params))

    def to_json(self) -> bytes:
        p = self.params
        doc: dict[str, Any] = {
            "model": self.model,
            "r": p.r,
            "alpha": p.alpha,
            "a": p.a,
            "b": p.b,
            "time_unit": "days",
            "log_likelihood": self.log_likelihood,
            "population": self.population,
            "sampled": self.sampled,
            "version": self.version,
            "fitted_at": self.fitted_at,
        }
        if self.spend is not None:
            doc["spend"] = self.spend.to_doc()
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Fit:
        doc = orjson.loads(raw)
        model = doc["model"]
        if model not in CHURN_MODELS:
            raise ValueError(f"unknown churn model {model!r}")
        return cls(
            model=model,
            params=Params(float(doc["r"]), float(doc["alpha"]), float(doc["a"]), float(doc["b"])),
            log_likelihood=float(doc["log_likelihood"]),
            population=int(doc["population"]),
            sampled=int(doc["sampled"]),
            version=int(doc["version"]),
            fitted_at=int(doc["fitted_at"]),
            spend=None if doc.get("spend") is None else SpendFit.from_doc(doc["spend"]),
        )
