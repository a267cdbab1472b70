"""On-device deployment: the model as an ONNX graph for ONNX Runtime, float32 or int8.

  python -m squeezebert.export --format onnx [--quant int8] --model RUN --out DIR
  python -m squeezebert.deploy.check --workdir RUN --onnx DIR ...   # SST-2 dev agreement
  python -m squeezebert.bench --runtime onnx                         # JAX vs ORT vs PyTorch

onnx_graph builds the graph from our parameters (real MatMuls; int8 weights of
squeezebert.quant's int8 model in the form ORT runs on its int8 kernels), onnx_export writes
the directory a device needs (model.onnx, deploy.json, tokenizer files). onnx / onnxruntime
come from the `export` extra (deps.require names the pip command when they are missing). Why
ONNX and not TFLite: docs/deployment.md.
"""
