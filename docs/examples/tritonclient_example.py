"""Classify with NVIDIA's tritonclient over the Open Inference Protocol (KServe v2).

    pip install 'tritonclient[http]'
    make serve                      # kws12-diffres on 127.0.0.1:8000
    python docs/examples/tritonclient_example.py [--url 127.0.0.1:8000] [--model kws12-diffres]

1. checks the server and the model, reads the model metadata;
2. sends a batch of two spectrogram windows, shaped from the metadata, as binary tensor data
   and gets the probabilities, the frame scores and the top 3 labels (classification);
3. sends a 1.5 s waveform at 22.05 kHz (the server resamples it) as JSON tensor data.
"""

import argparse
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def spectrogram_windows(client: httpclient.InferenceServerClient, model: str) -> None:
    meta = client.get_model_metadata(model)
    print(f"{meta['name']} versions {meta['versions']} on {meta['platform']}")
    spec = next(i for i in meta["inputs"] if i["name"] == "spectrogram")
    _, frames, mels = spec["shape"]  # [-1, window frames, mel bins]
    # Two windows in the front end's units (natural-log mel power; silence = log(1e-6)).
    windows = np.random.default_rng(0).normal(-8.0, 2.0, (2, frames, mels)).astype(np.float32)
    tensor = httpclient.InferInput("spectrogram", list(windows.shape), "FP32")
    tensor.set_data_from_numpy(windows, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("frame_scores", binary_data=True),
               httpclient.InferRequestedOutput("probabilities", class_count=3)]
    result = client.infer(model, [tensor], outputs=outputs)
    scores = result.as_numpy("frame_scores")  # [2, frames]
    for row, top in enumerate(result.as_numpy("probabilities")):  # [2, 3] "p:index:label"
        labels = [entry.decode().split(":", 2) for entry in top]
        best = ", ".join(f"{label} {float(p):.3f}" for p, _, label in labels)
        print(f"window {row}: {best}; frame scores {scores[row].shape[0]}, "
              f"max {scores[row].max():.3f}")


def waveform(client: httpclient.InferenceServerClient, model: str, rate: int = 22050) -> None:
    t = np.arange(int(1.5 * rate)) / rate
    clip = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[np.newaxis]  # [1, N]
    tensor = httpclient.InferInput("waveform", list(clip.shape), "FP32")
    tensor.set_data_from_numpy(clip, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer(model, [tensor], outputs=outputs, parameters={"sample_rate": rate})
    probabilities = result.as_numpy("probabilities")[0]  # clip level: mean over windows
    print(f"waveform: {probabilities.shape[0]} class probabilities, best index "
          f"{int(probabilities.argmax())} ({probabilities.max():.3f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of the server")
    parser.add_argument("--model", default="kws12-diffres")
    args = parser.parse_args(argv)
    client = httpclient.InferenceServerClient(url=args.url)
    try:
        if not (client.is_server_live() and client.is_model_ready(args.model)):
            print(f"{args.model} is not ready at {args.url}", file=sys.stderr)
            return 1
        spectrogram_windows(client, args.model)
        waveform(client, args.model)
    except InferenceServerException as exc:
        print(f"server said {exc.status()}: {exc.message()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach {args.url}: {exc} (is `make serve` running?)", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
