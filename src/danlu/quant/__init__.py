"""Quantization: smaller models with a measured accuracy cost.

    quantizers.py  uniform grids (symmetric/asymmetric; 8/4/3/2 bits; per tensor/channel/group), int4
                   packing, per-layer error reports (MSE, SQNR, max error)
    gptq.py        GPTQ on one Linear (Hessian, Cholesky of its inverse, lazy batches, act-order, damping)
    linear.py      int8 and int4 weight-only and W8A8 Linear replacements (CPU kernels, a reference path)
    awq.py         AWQ: activation-aware scale search folded into the block, clipping search
    smoothquant.py SmoothQuant: smoothing scales folded into the block before W8A8
    apply.py       quantize a loaded model in place (RTN, GPTQ/AWQ/SmoothQuant block by block, NF4)
    store.py       quantized model dirs (quant/quant_config.json), read by danlu.model_dir.load_model
    stage.py       run_quantize: calibration data, quantize, the accuracy gate, the model dir out
    config.py      QuantConfig: the settings of `danlu quantize`

This package's __init__ imports nothing: danlu.model_dir reads quant/ through danlu.quant.store.
"""
