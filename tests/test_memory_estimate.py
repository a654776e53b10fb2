"""A trial's memory and CPU time, counted on the meta device (rayexp.backbones.footprint), and the preflight that
refuses a trial its node's memory cannot hold (with the numbers and the batch that fits) and announces CPU trials
of hours: the counts checked against real CPU forward passes and torchvision's published FLOPs."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision

from benchmarks.activation_memory import saved_bytes
from rayexp import preflight
from rayexp.backbones import create_trial_model, list_backbones
from rayexp.backbones.footprint import GB, STATE_BYTES_PER_PARAM, footprint, trial_memory
from rayexp.data.shards import load_manifest
from rayexp.settings import SweepSettings
from rayexp.training import Progress, TrainConfig

REPO = Path(__file__).resolve().parents[1]
VIT_H = "torchvision:vit_h_14@ViT_H_14_Weights.IMAGENET1K_SWAG_LINEAR_V1"  # 631M parameters, 224x224 only


def _manifest(size: tuple[int, int], classes: int = 10, train: int = 1438, test: int = 359) -> dict:
    return {
        "input_size": list(size),
        "n_classes": classes,
        "classes": [str(c) for c in range(classes)],
        "splits": {"train": {"rows": train}, "test": {"rows": test}},
    }


def _real_per_image(name: str, size: tuple[int, int], precision: str) -> tuple[float, float]:
    """(saved bytes per image, saved bytes that do not grow with the batch) of the trial's real model on the CPU,
    from forwards at batches 2 and 4."""
    model = create_trial_model(name, 10, seed=0, device=torch.device("cpu"), pretrained=False)
    small, large = (saved_bytes(model, size, b, precision) for b in (2, 4))
    per_image = (large - small) / 2
    return per_image, small - 2 * per_image


@pytest.mark.parametrize(
    "name, size",
    [("torchvision:resnet18", (160, 160)), ("torchvision:vit_b_16", (224, 224)), ("swin_t", (128, 128))],
)
def test_activations_counted_on_meta_are_those_a_real_cpu_forward_saves(name, size):
    real, _ = _real_per_image(name, size, "fp32")
    counted = footprint(name, size, "fp32").saved_per_image
    # the meta pass at batch 2 puts what does not grow with the batch on each image too: a few per cent at most
    assert real <= counted <= 1.05 * real, (counted, real)


def test_half_precision_counts_the_activations_and_autocasts_weight_copies_of_a_real_bf16_forward():
    real, real_fixed = _real_per_image("torchvision:resnet18", (128, 128), "bf16")
    counted = footprint("torchvision:resnet18", (128, 128), "bf16")
    assert 0.9 * real <= counted.saved_per_image <= 1.05 * real, (counted.saved_per_image, real)
    # autocast's bf16 copies of the weights, saved for the backward pass: 2 bytes per parameter but the head's
    assert counted.saved_fixed == pytest.approx(real_fixed, rel=0.1)
    assert counted.saved_fixed == 2 * counted.body_parameters
    assert footprint("torchvision:resnet18", (128, 128), "fp32").saved_per_image > 1.8 * counted.saved_per_image


@pytest.mark.parametrize("arch", ["resnet18", "vit_b_16", "convnext_tiny"])
def test_forward_flops_counted_on_meta_are_torchvisions_published_ones(arch):
    """torchvision's weights give GFLOPs as multiply-adds (``_ops``) at 224x224; the ViT's attention is counted by
    its formula, the fused kernel having none."""
    published = 2e9 * torchvision.models.get_model_weights(arch).DEFAULT.meta["_ops"]
    counted = footprint(f"torchvision:{arch}", (224, 224), "fp32", flops=True)
    assert counted.forward_flops == pytest.approx(published, rel=0.01)
    assert counted.train_flops == 3 * counted.forward_flops


def test_parameters_follow_the_trials_classes_and_state_is_twenty_bytes_each():
    estimate = trial_memory("torchvision:resnet18", (64, 64), 32, "fp32", num_classes=7)
    model = create_trial_model("torchvision:resnet18", 7, seed=0, device=torch.device("cpu"), pretrained=False)
    assert estimate.footprint.parameters(7) == sum(p.numel() for p in model.parameters())
    assert estimate.state_bytes == STATE_BYTES_PER_PARAM * sum(p.numel() for p in model.parameters())
    assert estimate.total_bytes == estimate.state_bytes + 32 * estimate.footprint.saved_per_image
    # a fixed-size model computes at its own size, whatever the dataset's: one count for both
    assert footprint(VIT_H, (32, 32), "fp32") is footprint(VIT_H, (518, 518), "fp32")
    assert footprint("torchvision:resnet18+random", (64, 64), "fp32") is estimate.footprint


def test_a_631m_vit_at_batch_64_in_fp32_is_refused_on_a_24_gb_node_with_the_numbers_and_the_batch_that_fits():
    settings = SweepSettings(backbones=("torchvision:resnet18", VIT_H), datasets=("big",), batch_size=64)
    node = preflight.TrialNode(gpu=False, memory=24e9, where="this node's 24.0 GB")
    problems, notes = preflight.memory_problems(settings, {"big": _manifest((518, 518))}, node)
    assert notes == []
    assert len(problems) == 1  # ResNet-18 fits
    message = problems[0]
    assert message.startswith(f"{VIT_H} on big at 224x224 (resized from 518x518), batch 64, fp32: about ")
    estimate = trial_memory(VIT_H, (224, 224), 64, "fp32", num_classes=10)
    assert estimate.footprint.parameters(10) == pytest.approx(631e6, rel=0.01)
    assert estimate.state_bytes == pytest.approx(12.6e9, rel=0.01)
    assert estimate.total_bytes > 50e9  # activations of about 0.68 GB per image, 64 of them
    fits = estimate.largest_batch(24e9)
    assert trial_memory(VIT_H, (224, 224), fits, "fp32", 10).total_bytes <= 24e9
    assert trial_memory(VIT_H, (224, 224), fits + 1, "fp32", 10).total_bytes > 24e9
    assert (
        f"{estimate.describe()} > this node's 24.0 GB; fix: --batch-size {fits} or less (it sets every backbone's "
        "batch), or leave it out of --backbones" in message
    )
    assert f"weights and optimizer {estimate.state_bytes / GB:.1f} GB + activations" in message
    # the same sweep on an 80 GB GPU in bf16 (autocast) at batch 16 fits
    gpu = preflight.TrialNode(gpu=True, memory=80 * 2**30, where="one A100-80G's 85.9 GB")
    assert preflight.memory_problems(replace(settings, batch_size=16), {"big": _manifest((518, 518))}, gpu) == ([], [])


def test_a_model_that_cannot_be_counted_is_a_note_not_a_refusal():
    settings = SweepSettings(backbones=("torchvision:alexnet",), datasets=("tiny",), batch_size=8)
    node = preflight.TrialNode(gpu=False, memory=24e9, where="this node's 24.0 GB")
    # 16x16 images: AlexNet's pooling has nothing left to pool (input_size_problems refuses them separately)
    problems, notes = preflight.memory_problems(settings, {"tiny": _manifest((16, 16))}, node)
    assert problems == []
    assert len(notes) == 1
    assert notes[0].startswith("torchvision:alexnet: its training memory at 16x16 cannot be counted on the meta device")
    assert notes[0].endswith("Output size is too small); not checked against this node's 24.0 GB")


def test_the_registry_at_its_batches_fits_an_80_gb_gpu_and_the_preflight_names_that_gpu():
    settings = SweepSettings(
        backbones=tuple(s.name for s in list_backbones()),
        datasets=("d",),
        address="ray://head:10001",
        accelerator_type="A100-80G",
    )
    node, why = preflight.trial_node(settings)
    assert (node.gpu, node.memory, why) == (True, 81920 * 2**20, "")
    manifests = {"d": _manifest((256, 256))}
    assert preflight.trial_memory_check(settings, manifests) == ([], [])
    # their estimates in bf16 are real numbers: 13-22 GB at 256x256, under a quarter of the card's
    for spec in list_backbones():
        estimate = trial_memory(spec.name, (256, 256), spec.batch_size, "bf16", 10)
        assert 10e9 < estimate.total_bytes < 25e9, (spec.name, estimate.describe())
    # without a type whose memory is known, a cluster's GPUs are not known before Ray starts: said, not guessed
    problems, notes = preflight.trial_memory_check(replace(settings, accelerator_type=None), manifests)
    assert problems == [] and "not checked" in notes[0]


def _demo_settings() -> SweepSettings:
    path = REPO / "sweeps" / "demo.py"
    spec = importlib.util.spec_from_file_location("rayexp_demo_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DEMO.settings


def test_the_demo_on_a_small_cpu_is_neither_refused_nor_warned_about(digits_dir):
    settings = _demo_settings()
    manifests = {"digits": load_manifest(str(digits_dir), "digits")}
    node = preflight.TrialNode(gpu=False, memory=4e9, where="this machine's 4.0 GB of memory")
    assert preflight.trial_memory_check(settings, manifests, node) == ([], [])
    assert preflight.trial_memory_check(settings, manifests) == ([], [])  # on this machine, as the sweep checks it
    estimate = trial_memory(settings.backbones[0], (32, 32), settings.batch_size, "fp32", 10)
    assert estimate.total_bytes < 0.2e9


def test_a_cpu_trial_of_hours_is_announced_with_its_time_and_a_short_one_is_not():
    manifests = {"big": _manifest((224, 224))}
    settings = SweepSettings(backbones=(VIT_H, "torchvision:mobilenet_v3_small"), datasets=("big",), batch_size=8)
    node = preflight.TrialNode(gpu=False, memory=1e12, where="a large machine")
    notes = preflight.cpu_time_notes(settings, manifests, node)
    assert len(notes) == 1
    counted = footprint(VIT_H, (224, 224), "fp32", flops=True)
    hours = 21 * (1438 * counted.train_flops + 359 * counted.forward_flops) / preflight.CPU_FLOPS_PER_THREAD / 3600
    assert hours > 100
    assert notes[0].startswith(
        f"{VIT_H} on big at 224x224, fp32: at least about {hours:.1f} hours per trial on this CPU"
    )
    assert "21 epochs at the least of 1438 training images" in notes[0]
    # two threads per trial halve it; a GPU, or a time budget under the hour, says nothing
    assert f"about {hours / 2:.1f} hours" in preflight.cpu_time_notes(settings, manifests, replace(node, threads=2))[0]
    assert preflight.cpu_time_notes(settings, manifests, replace(node, gpu=True)) == []
    assert preflight.cpu_time_notes(replace(settings, trial_time_budget=1800), manifests, node) == []


@pytest.mark.parametrize(
    "train", [TrainConfig(), TrainConfig(max_epochs=3, patience=2), TrainConfig(patience=4, dualopt=False)]
)
def test_least_epochs_is_what_dualopt_runs_when_nothing_ever_improves(train):
    progress = Progress()
    while not progress.done:
        progress.update(0.5, {"acc": 0.5, "balanced_acc": 0.5})
        progress.advance(train)
    assert preflight.least_epochs(SweepSettings(train=train)) == progress.epoch
    assert preflight.least_epochs(SweepSettings(train=train, trial_epoch_budget=2)) == 2


def test_a_local_cpu_trial_gets_this_machines_memory_its_worker_cpus_as_threads_and_shares_the_cpus():
    node, why = preflight.trial_node(SweepSettings(device="cpu", worker_cpus=2.5))
    assert why == "" and not node.gpu and node.threads == 2
    assert 0.5e9 < node.memory <= preflight.host_memory()
    half = preflight.trial_node(SweepSettings(device="cpu", worker_cpus=0.5, data_cpus=0.5))[0]
    assert (half.threads, half.at_once) == (1, os.cpu_count())  # the demo's: two at once on 2 cores
    assert preflight.trial_node(SweepSettings(device="cpu", worker_cpus=0.5, max_concurrent=1))[0].at_once == 1


def test_cpu_trials_that_fit_one_at_a_time_but_not_together_are_noted_with_the_concurrency_that_fits():
    settings = SweepSettings(backbones=("torchvision:resnet18",), datasets=("d",), batch_size=32, seeds=(0, 1, 2, 3))
    manifests = {"d": _manifest((224, 224))}
    each = trial_memory("torchvision:resnet18", (224, 224), 32, "fp32", 10).total_bytes
    node = preflight.TrialNode(gpu=False, memory=2.5 * each, where="this machine's memory", at_once=4)
    problems, notes = preflight.memory_problems(settings, manifests, node)
    assert problems == []
    assert len(notes) == 1
    assert notes[0].startswith("up to 4 trials run at once on this machine: torchvision:resnet18 on d needs about ")
    assert notes[0].endswith("> this machine's memory; --max-concurrent 2 keeps them within it")
    assert preflight.memory_problems(settings, manifests, replace(node, at_once=2)) == ([], [])


def test_trials_of_a_fraction_of_a_gpu_get_that_fraction_of_its_memory():
    settings = SweepSettings(address="ray://head:10001", accelerator_type="A100-80G", gpus_per_trial=0.25)
    node, _ = preflight.trial_node(settings)
    assert node.memory == 0.25 * 81920 * 2**20
    assert node.where == "0.25 of one A100-80G's 85.9 GB"
    assert preflight.trial_node(replace(settings, gpus_per_trial=2))[0].memory == 81920 * 2**20


def test_the_visible_gpus_memory_is_read_from_nvidia_smi_as_cuda_visible_devices_leaves_it():
    listing = "0, GPU-aaaa-1111, 81920\n1, GPU-bbbb-2222, 40960\n"
    assert preflight.visible_gpu_memory(listing, None) == [81920 * 2**20, 40960 * 2**20]
    assert preflight.visible_gpu_memory(listing, "1") == [40960 * 2**20]
    assert preflight.visible_gpu_memory(listing, "GPU-aaaa") == [81920 * 2**20]
    assert preflight.visible_gpu_memory(listing, "") == []


def test_a_vit_whose_weights_are_for_518_is_built_and_counted_at_518():
    # vit_h_14's default (SWAG) weights are for 518x518: the model is built for that size, as torchvision builds
    # it when given the weights (built at 224 it could neither load them nor take a 518 input)
    counted = footprint("torchvision:vit_h_14+random", (32, 32), "fp32")
    assert counted is footprint("torchvision:vit_h_14+random", (518, 518), "fp32")
    assert counted.saved_per_image > 3e9  # 37x37 patches: 3.6 GB per image, against 0.68 GB at 224
