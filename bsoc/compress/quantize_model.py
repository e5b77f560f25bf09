"""``bsoc quantize``: a float model folder in, an int8 model folder out.

Which arithmetic is a choice of the command: weight-only int8 (:mod:`bsoc.compress.quantize`)
or full integer (:mod:`bsoc.compress.integer`); this module writes either as a model folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bsoc.compress.integer import SCHEME as INTEGER_SCHEME
from bsoc.compress.integer import W8A16_SUFFIX, IntegerLstmEstimator
from bsoc.compress.quantize import INT8_SUFFIX, quantization_record, quantize_network
from bsoc.data.dataset import Dataset
from bsoc.errors import ConfigError, ModelFileError
from bsoc.nn.estimator import LstmSocEstimator

ACTIVATIONS = ("float32", "int16")


def quantize_model(model: Path, out: Path, *, data: Dataset | None = None, command: str = "",
                   force: bool = False, activations: str = "float32"
                   ) -> tuple[LstmSocEstimator, dict[str, Any]]:
    """Quantise the model folder ``model`` and write the int8 model folder ``out``:
    weight-only (``activations`` float32, kind ``<kind>-int8``) or full integer (int16,
    kind ``<kind>-w8a16``, :mod:`bsoc.compress.integer`).

    With ``data``, the validation accuracy of the float and the int8 model is measured and
    recorded (no calibration either way: the activations' scales are per vector and step).
    """
    if activations not in ACTIVATIONS:
        raise ConfigError(f"unknown activations {activations!r}",
                          remedy=f"use one of {', '.join(ACTIVATIONS)}")
    integer = activations == "int16"
    source = LstmSocEstimator.load(model)
    if source.kind.endswith((INT8_SUFFIX, W8A16_SUFFIX)):
        raise ModelFileError(f"{model} is already an int8 model ({source.kind})",
                             remedy="quantise its float source model instead")
    quantized = quantize_network(source.network)
    record = quantization_record(source.network, quantized)
    if integer:
        record["scheme"] = INTEGER_SCHEME
    make = IntegerLstmEstimator if integer else LstmSocEstimator
    record["source_model"] = {"path": str(model), "name": source.name, "kind": source.kind}
    carried = {k: v for k, v in source.metadata.items() if k != "validation"}  # float's
    metadata = {**carried, "quantization": record,
                "learnables_table": quantized.learnables_table(), "command": command}
    if data is not None:
        from bsoc.compress.workflow import validation_metrics

        record["data"] = {"name": data.name, "fingerprint": data.fingerprint()}
        record["val_rmse_pct_float"] = validation_metrics(source.network, data)["rmse_pct"]
        metadata["validation"] = validation_metrics(quantized, data, make=make)
        record["val_rmse_pct_int8"] = metadata["validation"]["rmse_pct"]
    suffix = W8A16_SUFFIX if integer else INT8_SUFFIX
    estimator = make(quantized, kind=source.kind + suffix, name=out.name, metadata=metadata)
    estimator.save(out, force=force)
    return estimator, record
