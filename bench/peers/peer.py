#!/usr/bin/env python3
"""Time one forward of a Taiyi / SD 1.x component, or a whole txt2img run, in a peer engine.

The peers are what a user would run instead of taiyi on a CPU: diffusers + transformers on PyTorch
(eager or torch.compile) and OpenVINO. Models are built from their config with random weights (the
architecture is what costs), so no download is needed. One point per process, so peak RSS is clean.

  python peer.py --engine torch --variant compile_bf16 --component unet --context 512
  python peer.py --engine openvino --variant default --component vae_decode

The last line on stdout is one JSON object (median_s, min_s, times_s, setup_s, peak_rss_mb, ...).
Variants:
  torch:    eager_fp32, eager_bf16_cl (bf16 weights + channels_last), compile_fp32, compile_bf16
            (inductor with freezing; bf16 + channels_last), eager_bf16_autocast
  openvino: default (on CPUs with bf16 support OpenVINO runs bf16), f32
Components: unet (batch 2 = CFG), vae_decode (batch 1), text_encoder (BERT, batch 2), txt2img
(torch only: the diffusers StableDiffusionPipeline with PNDM, CFG 7.5; --steps).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

THREADS = int(os.environ.get("PEER_THREADS", "2"))
for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_k, str(THREADS))

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = os.path.join(HERE, "..", "..", "tests", "fixtures", "data", "bert-chinese-vocab.txt")  # repo copy

# Taiyi-Stable-Diffusion-1B-Chinese-v0.1 (an SD 1.x UNet and VAE with a BERT text encoder)
TAIYI = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                 block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8,
                 cross_attention_dim=768, norm_num_groups=32),
    "vae": dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512),
    "text_encoder": dict(vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                         hidden_act="gelu", layer_norm_eps=1e-12),
}


def config(args, part):
    """The component's config: from --config DIR (a diffusers model folder) or Taiyi's."""
    if args.config:
        with open(os.path.join(args.config, part, "config.json")) as f:
            return {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    return dict(TAIYI[part])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions():
    out = {}
    for name in ("torch", "diffusers", "transformers", "openvino"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            pass
    return out


def build(args):
    """(module, inputs) for the component, random weights, fixed seeds."""
    import torch
    import torch.nn as nn
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1234)
    h, w = args.height // 8, args.width // 8
    if args.component == "unet":
        from diffusers import UNet2DConditionModel
        unet = UNet2DConditionModel(**config(args, "unet")).eval()
        ctx_dim = unet.config.cross_attention_dim

        class Step(nn.Module):
            def __init__(self):
                super().__init__()
                self.unet = unet

            def forward(self, sample, timestep, context):
                return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
        b = args.batch or 2
        return Step(), (torch.randn(b, 4, h, w, generator=g), torch.full((b,), 999, dtype=torch.long),
                        torch.randn(b, args.context, ctx_dim, generator=g))
    if args.component == "vae_decode":
        from diffusers import AutoencoderKL
        vae = AutoencoderKL(**config(args, "vae")).eval()

        class Decode(nn.Module):
            def __init__(self):
                super().__init__()
                self.vae = vae

            def forward(self, z):
                return self.vae.decode(z, return_dict=False)[0]
        return Decode(), (torch.randn(args.batch or 1, 4, h, w, generator=g),)
    if args.component == "text_encoder":
        from transformers import BertConfig, BertModel
        bert = BertModel(BertConfig(**config(args, "text_encoder")), add_pooling_layer=False).eval()

        class Encode(nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, ids):
                return self.bert(input_ids=ids, return_dict=False)[0]
        vocab = bert.config.vocab_size
        return Encode(), (torch.randint(0, vocab, (args.batch or 2, args.context), generator=g),)
    raise SystemExit(f"unknown component {args.component}")


def torch_forward(args, module, inputs):
    """A zero-argument callable running one forward in the chosen variant, and its setup seconds."""
    import torch
    v = args.variant
    conv = args.component != "text_encoder"
    if v in ("eager_bf16_cl", "compile_bf16"):
        module = module.to(torch.bfloat16)
        inputs = tuple(x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs)
        if conv:
            module = module.to(memory_format=torch.channels_last)
            inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
    if v.startswith("compile"):
        import torch._inductor.config as inductor
        inductor.freezing = True
        module = torch.compile(module, backend="inductor")
    if v == "eager_bf16_autocast":
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return module(*inputs)
    elif v in ("eager_fp32", "eager_bf16_cl", "compile_fp32", "compile_bf16"):
        def run():
            with torch.inference_mode():
                return module(*inputs)
    else:
        raise SystemExit(f"unknown torch variant {v}")
    setup = 0.0
    if v.startswith("compile"):
        t0 = time.perf_counter()
        run()
        setup = time.perf_counter() - t0
    return run, setup


def ir_path(args):
    tag = f"{args.component}_{args.width}x{args.height}_b{args.batch or 0}_ctx{args.context}"
    if args.config:
        tag += "_" + os.path.basename(os.path.normpath(args.config))
    return os.path.join(args.cache, tag + ".xml")


def openvino_convert(args):
    """Child process: torch module -> OpenVINO IR on disk (kept in --cache for later runs)."""
    import openvino as ov
    import torch
    module, inputs = build(args)
    with torch.no_grad():
        model = ov.convert_model(module, example_input=inputs)
    os.makedirs(args.cache, exist_ok=True)
    ov.save_model(model, ir_path(args), compress_to_fp16=False)


def openvino_forward(args):
    import numpy as np
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints
    setup = 0.0
    if not os.path.exists(ir_path(args)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--convert-only"], check=True)
        setup += time.perf_counter() - t0
    import torch
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1234)
    h, w = args.height // 8, args.width // 8
    if args.component == "unet":
        b = args.batch or 2
        ctx_dim = config(args, "unet").get("cross_attention_dim", 768)
        inputs = [torch.randn(b, 4, h, w, generator=g).numpy(), np.full((b,), 999, dtype=np.int64),
                  torch.randn(b, args.context, ctx_dim, generator=g).numpy()]
    elif args.component == "vae_decode":
        inputs = [torch.randn(args.batch or 1, 4, h, w, generator=g).numpy()]
    else:
        vocab = config(args, "text_encoder")["vocab_size"]
        inputs = [torch.randint(0, vocab, (args.batch or 2, args.context), generator=g).numpy()]
    core = ov.Core()
    cfg = {props.inference_num_threads: THREADS}
    if args.variant == "f32":
        cfg[hints.inference_precision] = ov.Type.f32
    elif args.variant != "default":
        raise SystemExit(f"unknown openvino variant {args.variant}")
    t0 = time.perf_counter()
    model = core.read_model(ir_path(args))
    model.reshape({p.get_any_name(): ov.PartialShape(list(x.shape)) for p, x in zip(model.inputs, inputs)})
    compiled = core.compile_model(model, "CPU", cfg)
    setup += time.perf_counter() - t0
    request = compiled.create_infer_request()
    extra = {"precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}

    def run():
        request.infer(inputs)
        return request.get_output_tensor(0).data
    return run, setup, extra


def txt2img(args):
    """diffusers' StableDiffusionPipeline, Taiyi layout (BERT text encoder), random weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import BertConfig, BertModel, BertTokenizer
    if args.model:  # a model folder on disk, loaded the way a user loads one
        pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    else:
        torch.manual_seed(0)
        tok = BertTokenizer(VOCAB, model_max_length=args.context)
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**config(args, "vae")),
            text_encoder=BertModel(BertConfig(**config(args, "text_encoder"))),
            tokenizer=tok, unet=UNet2DConditionModel(**config(args, "unet")),
            scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if args.save_model:  # write the random pipeline as a diffusers folder (safetensors) and stop
        pipe.save_pretrained(args.save_model, safe_serialization=True)
        return None, 0.0
    v = args.variant
    if v in ("eager_bf16_cl", "compile_bf16"):
        pipe.to(torch.bfloat16)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if v.startswith("compile"):
        import torch._inductor.config as inductor
        inductor.freezing = True
        pipe.unet = torch.compile(pipe.unet, backend="inductor")
        pipe.vae.decoder = torch.compile(pipe.vae.decoder, backend="inductor")
    pipe.set_progress_bar_config(disable=True)

    def run():
        with torch.inference_mode():
            return pipe("滔滔江水, 连绵不绝, 唯美, 插画", num_inference_steps=args.steps, guidance_scale=7.5,
                        width=args.width, height=args.height, generator=torch.Generator().manual_seed(42),
                        output_type="np").images
    setup = 0.0
    if v.startswith("compile"):
        t0 = time.perf_counter()
        run()
        setup = time.perf_counter() - t0
    return run, setup


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=["torch", "openvino"], required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--component", choices=["unet", "vae_decode", "text_encoder", "txt2img"], required=True)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--batch", type=int, default=0, help="0: 2 for unet/text_encoder, 1 for vae_decode")
    ap.add_argument("--context", type=int, default=512, help="text tokens (Taiyi: 512, SD 1.5: 77)")
    ap.add_argument("--steps", type=int, default=20, help="txt2img only")
    ap.add_argument("--config", help="a diffusers model folder whose <part>/config.json to use (default: Taiyi)")
    ap.add_argument("--model", help="txt2img: load this diffusers folder (from_pretrained) instead of random weights")
    ap.add_argument("--save-model", help="txt2img: save the random pipeline to this folder and exit")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/taiyi-peers/openvino"))
    ap.add_argument("--convert-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.convert_only:
        return openvino_convert(args)

    import torch
    torch.set_num_threads(THREADS)
    extra = {}
    if args.component == "txt2img":
        if args.engine != "torch":
            raise SystemExit("txt2img is measured for the torch peer only")
        run, setup = txt2img(args)
        if args.save_model:
            print(f"saved the random pipeline to {args.save_model}", file=sys.stderr)
            return
    elif args.engine == "torch":
        module, inputs = build(args)
        run, setup = torch_forward(args, module, inputs)
    else:
        run, setup, extra = openvino_forward(args)
    for _ in range(args.warmup):
        run()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    result = dict(engine=args.engine, variant=args.variant, component=args.component, width=args.width,
                  height=args.height, batch=args.batch, context=args.context,
                  steps=args.steps if args.component == "txt2img" else None, threads=THREADS,
                  median_s=med, min_s=min(times), times_s=times, setup_s=setup, peak_rss_mb=peak_rss_mb(),
                  cpu=cpu_name(), versions=versions(), **extra)
    print(f"{args.engine}/{args.variant} {args.component}: median {med:.3f} s (min {min(times):.3f}, "
          f"n {len(times)}), setup {setup:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
