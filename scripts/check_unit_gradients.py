"""PTQ4ViT's unit-by-unit gradients (`UnitGradients.layer_grad`) against the whole-model backward
(`output_grads`) on every layer of a real model, with `torch.equal`.

Usage: python scripts/check_unit_gradients.py deit_tiny 16 [THREADS]   (swin_tiny 4, vit_base 8 ...)
"""
import sys

import torch


def main() -> None:
    model, images = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    import ptqbench.algorithms.hessian_search as hs
    from ptqbench.algorithms.streaming import quant_layers
    from ptqbench.bench.cells import calibration_images, load_model
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable

    net, weights = load_model(model)
    x, _ = calibration_images(net, images)
    method = build_method({"name": "ptq4vit", "search_rounds": 0}, Bits(4, 4))
    qm = make_quantizable(net, method.plan())
    method.quantize(qm, x)
    every = hs.output_grads(qm.model, x, 8)
    per_unit = hs.UnitGradients(qm.model, qm.units, x, 8)
    checked = differ = 0
    for unit in qm.units:
        for layer in quant_layers(unit.module):
            g = per_unit.layer_grad(unit, layer)
            if (g is None) != (layer not in every):
                raise SystemExit(f"{unit.name}: one side has no gradient for a {type(layer).__name__}")
            if g is None:
                continue
            checked += 1
            if not torch.equal(g, every[layer]):
                differ += 1
                print(f"{unit.name} {type(layer).__name__}: max |diff| {(g - every[layer]).abs().max().item():.3g}")
        per_unit.unit_done(unit)
    print(f"{model} ({weights} weights), {images} images: {checked} layers, {differ} differ")


if __name__ == "__main__":
    main()
