"""Named VDVAE configurations: the five published models (Child 2021 and the hyperparameters of its
reference implementation, openai/vdvae; parameter counts exact) and small ones for CPU work. Each
value is a dict of `VDVAEConfig` fields."""

from __future__ import annotations

_FFHQ1024_WIDTHS = "512:32,256:64,128:512,64:512,32:512,16:512,8:512,4:512,1:512"

PRESETS: dict[str, dict] = {
    # 39,145,700 parameters, 43 top-down blocks.
    "cifar10": dict(
        width=384, zdim=16, num_mixtures=10, image_size=32, image_channels=3,
        enc_blocks="32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
        dec_blocks="1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21",
        input_shift=-120.63838, input_scale=1.0 / 64.16736),
    # 119,280,868 parameters, 78 blocks.
    "imagenet32": dict(
        width=512, zdim=16, num_mixtures=10, image_size=32, image_channels=3,
        enc_blocks="32x15,32d2,16x9,16d2,8x8,8d2,4x6,4d4,1x6",
        dec_blocks="1x2,4m1,4x4,8m4,8x9,16m8,16x19,32m16,32x40",
        input_shift=-116.2373, input_scale=1.0 / 69.37404),
    # 125,005,860 parameters, 75 blocks.
    "imagenet64": dict(
        width=512, zdim=16, num_mixtures=10, image_size=64, image_channels=3,
        enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
        dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12",
        input_shift=-115.92961967, input_scale=1.0 / 69.37404),
    # 114,874,852 parameters, 66 blocks; 5-bit likelihood in the clean n-bit form.
    "ffhq256": dict(
        width=512, zdim=16, num_mixtures=10, image_size=256, image_channels=3, n_bits=5,
        enc_blocks="256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
        dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128",
        input_shift=-112.8666757481, input_scale=1.0 / 69.84780273),
    # 109,366,904 parameters, 70 blocks; the input statistics are for x in [0, 1].
    "ffhq1024": dict(
        width=16, custom_width_str=_FFHQ1024_WIDTHS, zdim=16, num_mixtures=2, image_size=1024,
        image_channels=3,
        enc_blocks="1024x1,1024d2,512x3,512d2,256x5,256d2,128x7,128d2,64x10,64d2,32x14,32d2,"
                   "16x7,16d2,8x5,8d2,4x5,4d4,1x4",
        dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x20,64m32,64x14,128m64,128x7,256m128,"
                   "256x2,512m256,1024m512",
        input_unit_interval=True, input_shift=-0.4387, input_scale=1.0 / 0.2743),
    # The CPU-scale prototype (docs/benchmarks.md; Fashion-MNIST, 14 top-down blocks): 403,188
    # parameters in the reference layout. The prototype reported 402,735 = ours less the 5 unused
    # grey-image DMOL coefficient channels (5 × 65) and less the decoder's gain and bias (2 × 64).
    # Input statistics: Fashion-MNIST pixel mean 72.94 and std 90.0 (0..255).
    "fmnist_400k": dict(
        width=64, zdim=16, num_mixtures=5, image_size=28, image_channels=1,
        enc_blocks="28x1,28d2,14x1,14d2,7x1,7d7,1x2",
        dec_blocks="1x2,7m1,7x3,14m7,14x3,28m14,28x3",
        input_shift=-72.94, input_scale=1.0 / 90.0),
    # Smoke size for 28×28 grey data: a training step takes milliseconds.
    "fmnist_tiny": dict(
        width=16, zdim=4, num_mixtures=2, image_size=28, image_channels=1,
        enc_blocks="28x1,28d2,14x1,14d2,7x1,7d7,1x1",
        dec_blocks="1x1,7m1,7x1,14m7,28m14",
        input_shift=-72.94, input_scale=1.0 / 90.0),
    # The public reference's tiny CIFAR test model, shipped in examples/vdvae_tiny_cifar/ (13
    # blocks, 32×32 RGB).
    "cifar10_tiny": dict(
        width=32, zdim=16, num_mixtures=10, image_size=32, image_channels=3,
        enc_blocks="32x2,32d2,16x2,16d2,8x2,8d2,4x2,4d4,1x2",
        dec_blocks="1x1,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x2",
        input_shift=-120.63838, input_scale=1.0 / 64.16736),
}
