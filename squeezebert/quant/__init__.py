"""8-bit (and 4-bit) quantization with qwix: QAT, PTQ with calibration, a real int8 model.

    from squeezebert import quant
    qcfg = quant.QuantConfig(mode="qat", weight_bits=8, act_bits=8)
    qat = quant.quantize_for_training(float_model, qcfg)   # the trainer: --config.quant.mode=qat
    int8 = quant.to_int8(qat, qcfg)                          # called like the float model
    quant.save_int8(int8, "out_dir", qcfg); quant.load_int8("out_dir")

CLI (PTQ / int8 conversion of a training workdir, dev metrics through the trainer's eval
path): python -m squeezebert.quant --workdir RUN --mode ptq|int8 --out DIR
"""

from squeezebert.quant.config import MODULES, QuantConfig, rule_specs
from squeezebert.quant.core import (INT8_CONFIG, QuantizedTable, abstract_int8_model,
                                    calibrate, dir_bytes, has_quant_stats, is_int8_model,
                                    load_int8, ptq_rules, qat_rules, quantize_for_training,
                                    save_int8, to_int8)
from squeezebert.quant.fake import fake_quant
