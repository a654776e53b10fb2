"""The served model: an MLflow pyfunc that takes images and returns labels.

MLflow copies this file into every model rayexp registers ("models from code") and runs it when the model is loaded
or served, so it stands alone: MLflow, torch, torchvision, numpy and pandas, never rayexp. The network is a
``torch.export`` program (:mod:`rayexp.export`); preprocessing is the trials' evaluation path: decode to RGB,
resize to the dataset's input size (bilinear, antialiased, aspect ratio ignored, as the protocol does), normalize
with the trial's mean and std.

Input: a DataFrame with an ``image`` column of encoded image bytes (JPEG, PNG, …; base64 in a JSON request, as
MLflow's binary type wants) or a ``pixels`` column of decoded ``H x W x 3`` uint8 arrays (nested lists in JSON).
Output: one row per image with ``label`` (the class name), ``class_index`` and ``probabilities`` (in class order).
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import torch


def preprocess(images: list[torch.Tensor], config: dict) -> torch.Tensor:
    """3 x H x W uint8 RGB images to the network's normalised N x 3 x h x w float batch."""
    from torchvision.transforms.v2.functional import resize

    height, width = config["input_size"]
    mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(config["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    batch = torch.stack([resize(image, [height, width], antialias=True) for image in images]).float()
    return (batch - mean) / std


def decode(data: bytes) -> torch.Tensor:
    """Encoded image bytes to a 3 x H x W uint8 RGB tensor."""
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def from_pixels(pixels) -> torch.Tensor:
    array = np.asarray(pixels, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"pixels must be H x W x 3 (RGB), got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """rayexp's fine-tuned backbone as a classifier of images."""

    def load_context(self, context) -> None:
        with open(context.artifacts["config"]) as handle:
            self.config = json.load(handle)
        self.network = torch.export.load(context.artifacts["network"]).module()

    def _images(self, model_input) -> list[torch.Tensor]:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        images = []
        for i in range(len(frame)):
            row = frame.iloc[i]
            data = row.get("image")
            if isinstance(data, str):  # base64 text that no schema decoded
                import base64

                data = base64.b64decode(data)
            if data is not None and not (isinstance(data, float) and np.isnan(data)):
                images.append(decode(bytes(data)))
            elif row.get("pixels") is not None:
                images.append(from_pixels(row["pixels"]))
            else:
                raise ValueError(f"row {i}: give the image's encoded bytes in 'image' or its H x W x 3 'pixels'")
        return images

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        images = self._images(model_input)
        if not images:
            return pd.DataFrame({"label": [], "class_index": [], "probabilities": []})
        with torch.no_grad():
            probabilities = self.network(preprocess(images, self.config)).float().softmax(dim=1)
        index = probabilities.argmax(dim=1).tolist()
        classes = self.config["classes"]
        return pd.DataFrame(
            {
                "label": [classes[i] for i in index],
                "class_index": index,
                "probabilities": [p.tolist() for p in probabilities],
            }
        )


mlflow.models.set_model(ImageClassifier())
