"""Generated images labelled by eye: real failures for the judge to refuse, and its audit (issue 30, section 3).

A person looks at numbered contact sheets of a base model's generations (fresh captions, fresh seeds) and lists the
images they reject: no recognisable object of any category (blobs, noise, smears, fragments). Those labels go into
the judge's training (its "train" split: the rejected as negatives, the accepted as objects, every other head
ignored) or into its audit ("audit" split, never trained on): the judge's verdict beside the person's, with the
agreement and the false accepts. One person's eye does not agree with itself on borderline shapes (0.84 on the audit
split, labelled twice a session apart), so the audit's bars are scored on the consensus: the images that a second
labelling, blind to the first (``relabel``), puts on the same side.

    python -m perfusion.world.families.eye_labels collect --run-dir checkpoints/families --count 100 \\
        --first-seed 900000 --out work/eye-a            # images.npz and numbered sheets to look at
    python -m perfusion.world.families.eye_labels label --collection work/eye-a --split train \\
        --rejected 3,17,42                              # adds them to assets/families_eye_labels.npz
    python -m perfusion.world.families.eye_labels relabel --collection work/eye-a --rejected 3,42  # a second look
    python -m perfusion.world.families.eye_labels audit [--out docs/sheets/judge-audit.png]
    python -m perfusion.world.families.eye_labels unprompted --count 1500 --first-seed 960000

``unprompted`` stores a different kind of negative, labelled by rule, not by eye: the base model's generations from
the empty prompt at guidance 1 (assets/families_unprompted.npz). Without a caption the model mixes parts of several
categories in its own textures, so almost all are the failures a person rejects (about 23 in 25 by eye at step
~11,000; the rest pass for an object, and are label noise the judge's training tolerates).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perfusion.files import atomic_savez
from perfusion.sheets import SheetRow, write_sheet

from .captions import describe
from .scenes import sample_spec

EYE_LABELS_PATH = Path(__file__).resolve().parents[1] / "assets" / "families_eye_labels.npz"
UNPROMPTED_PATH = EYE_LABELS_PATH.with_name("families_unprompted.npz")
SPLITS = ("train", "audit")
UNPROMPTED = "unprompted"  # the split name of rule-labelled empty-prompt generations
PER_SHEET = 25
NOT_RELABELLED = -1


@dataclass
class EyeLabels:
    """Images (N, 64, 64, 3) uint8 with a person's verdict (True: accepted as an object) and their split."""

    images: np.ndarray
    accepted: np.ndarray  # (N,) bool
    splits: np.ndarray  # (N,) str
    captions: list[str]
    second: np.ndarray | None = None  # (N,) int8: a second, blind labelling (1 accepted, 0 rejected, -1 none)

    def __post_init__(self):
        if self.second is None:
            self.second = np.full(len(self.accepted), NOT_RELABELLED, dtype=np.int8)

    @classmethod
    def load(cls, path: Path = EYE_LABELS_PATH) -> EyeLabels:
        if not Path(path).is_file():
            return cls(np.zeros((0, 64, 64, 3), np.uint8), np.zeros(0, bool), np.zeros(0, "<U5"), [])
        data = np.load(path)
        second = data["second"] if "second" in data.files else None
        return cls(data["images"], data["accepted"], data["splits"], json.loads(str(data["captions"])), second)

    def save(self, path: Path = EYE_LABELS_PATH) -> None:
        atomic_savez(
            path,
            images=self.images,
            accepted=self.accepted,
            splits=self.splits,
            captions=json.dumps(self.captions),
            second=self.second,
        )

    def split(self, name: str) -> EyeLabels:
        keep = self.splits == name
        captions = list(np.array(self.captions)[keep])
        return EyeLabels(self.images[keep], self.accepted[keep], self.splits[keep], captions, self.second[keep])

    @property
    def sure(self) -> np.ndarray:
        """(N,) bool: relabelled, and both labellings agree (the consensus the audit's bars are scored on)."""
        return (self.second != NOT_RELABELLED) & (self.second == self.accepted)

    def __len__(self) -> int:
        return len(self.accepted)


def sample_rows(labels: EyeLabels, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random images (N, 3, 64, 64) in [0, 1] of ``labels`` and their verdicts (1 accepted, 0 not)."""
    index = torch.randint(len(labels), (count,), generator=generator).numpy()
    images = torch.from_numpy(labels.images[index]).permute(0, 3, 1, 2).float() / 255.0
    return images, torch.from_numpy(labels.accepted[index].astype(np.int64))


@torch.no_grad()
def generate_one_each(pipe, prompts: list[str], first_seed: int, guidance: float) -> np.ndarray:
    """One image per prompt, prompt n from seed first_seed + n, with the base model's step count: (N, 64, 64, 3)."""
    from .sampling import sampling_defaults

    steps, _ = sampling_defaults(None, None)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, len(prompts), 16):
        seeds = range(first_seed + start, first_seed + min(len(prompts), start + 16))
        images += pipe(
            prompts[start : start + 16],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        ).images
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def collect(pipe, count: int, first_seed: int, out: Path) -> None:
    """``count`` generations of fresh captions (one seed each) as images.npz, and numbered sheets of PER_SHEET."""
    from .sampling import sampling_defaults

    captions = []
    for index in range(count):
        rng = random.Random(first_seed + index)
        captions.append(describe(sample_spec(rng), rng).text)
    array = generate_one_each(pipe, captions, first_seed, sampling_defaults(None, None)[1])
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "images.npz", images=array, captions=json.dumps(captions))
    write_numbered_sheets(array, captions, out, [""] * len(captions))


def collect_unprompted(pipe, count: int, first_seed: int, path: Path = UNPROMPTED_PATH) -> EyeLabels:
    """``count`` generations from the empty prompt at guidance 1 (a seed each), all refused, saved to ``path``."""
    array = generate_one_each(pipe, [""] * count, first_seed, guidance=1.0)
    labels = EyeLabels(array, np.zeros(count, dtype=bool), np.array([UNPROMPTED] * count), [""] * count)
    labels.save(path)
    return labels


def write_numbered_sheets(images: np.ndarray, captions: list[str], out: Path, notes: list[str]) -> list[Path]:
    from PIL import Image

    paths = []
    for start in range(0, len(images), PER_SHEET):
        cells = [
            (Image.fromarray(images[n]), f"{n}: {captions[n][:28]}{notes[n]}")
            for n in range(start, min(len(images), start + PER_SHEET))
        ]
        rows = [SheetRow("", cells[i : i + 5]) for i in range(0, len(cells), 5)]
        path = out / f"sheet-{start // PER_SHEET:02d}.png"
        write_sheet(path, rows, title=f"{out.name}: images {start}-{start + len(cells) - 1}", columns=5)
        paths.append(path)
    return paths


def image_numbers(text: str) -> set[int]:
    """Comma-separated image numbers ("3, 17,42"), or one clear line for anything else."""
    try:
        return {int(item) for item in text.replace(" ", "").split(",") if item}
    except ValueError:
        raise SystemExit(f"eye_labels: --rejected takes comma-separated image numbers, not {text!r}") from None


def collection_images(collection: Path, rejected: set[int]) -> tuple[np.ndarray, list[str]]:
    """A collection's 64x64 images and captions, with the rejected numbers checked against them."""
    data = np.load(collection / "images.npz")
    images, captions = data["images"], json.loads(str(data["captions"]))
    if images.ndim != 4 or images.shape[1:] != (64, 64, 3):
        raise SystemExit(f"eye_labels: {collection} holds images of shape {images.shape[1:]}, not 64x64 RGB")
    if min(rejected, default=0) < 0:
        raise SystemExit(f"eye_labels: image numbers start at 0, not {min(rejected)}")
    if max(rejected, default=-1) >= len(images):
        raise SystemExit(f"eye_labels: {collection} holds {len(images)} images, not {max(rejected) + 1}")
    return images, captions


def label(collection: Path, split: str, rejected: set[int], path: Path = EYE_LABELS_PATH) -> EyeLabels:
    """The collection's images with a person's verdicts, added to the store (refused if already there)."""
    images, captions = collection_images(collection, rejected)
    store = EyeLabels.load(path)
    stored = {image.tobytes() for image in store.images}
    if any(image.tobytes() in stored for image in images):
        raise SystemExit(f"eye_labels: {collection} is in {path} already")
    accepted = np.array([n not in rejected for n in range(len(images))])
    store = EyeLabels(
        np.concatenate([store.images, images]),
        np.concatenate([store.accepted, accepted]),
        np.concatenate([store.splits, np.array([split] * len(images))]),
        store.captions + captions,
    )
    store.save(path)
    return store


def relabel(collection: Path, rejected: set[int], path: Path = EYE_LABELS_PATH) -> EyeLabels:
    """A second labelling of a stored collection, made blind to the first: kept beside it, so that the audit can
    be scored where the two agree (one person's eye does not agree with itself on borderline shapes)."""
    images, _ = collection_images(collection, rejected)
    store = EyeLabels.load(path)
    rows = {image.tobytes(): row for row, image in enumerate(store.images)}
    missing = sum(image.tobytes() not in rows for image in images)
    if missing:
        raise SystemExit(f"eye_labels: {missing} images of {collection} are not in {path}; label them first")
    if any(store.second[rows[image.tobytes()]] != NOT_RELABELLED for image in images):
        raise SystemExit(f"eye_labels: {collection} has a second labelling already; it is kept, not overwritten")
    for n, image in enumerate(images):
        store.second[rows[image.tobytes()]] = int(n not in rejected)
    store.save(path)
    return store


def ranking_auc(scores: np.ndarray, person: np.ndarray) -> float:
    """How well ``scores`` rank what the person accepts above what they reject: the chance that an accepted image
    outscores a rejected one (ties count half). 0.5 is chance, whatever the threshold."""
    above = scores[person][:, None] - scores[~person][None, :]
    return float((above > 0).mean() + 0.5 * (above == 0).mean()) if above.size else float("nan")


def verdict_scores(judged: np.ndarray, person: np.ndarray) -> dict:
    """Verdicts (True: accepted) against a person's: agreement, false accepts (accepted, though the person rejects,
    over the person's rejections) and false refusals (over the person's acceptances)."""
    return {
        "images": int(len(person)),
        "rejected_by_eye": int((~person).sum()),
        "agreement": float((judged == person).mean()),
        "false_accepts": float((judged & ~person).sum() / max(1, (~person).sum())),
        "false_refusals": float((~judged & person).sum() / max(1, person.sum())),
    }


def audit(judge, labels: EyeLabels, out: Path) -> dict:
    """The judge against the person on the audit split: agreement, false accepts (accepted by the judge, rejected by
    the person, over the person's rejections) and false refusals; a sheet with both verdicts under each image."""
    from PIL import Image

    if not len(labels):
        return {}
    reading = judge.read(torch.from_numpy(labels.images).permute(0, 3, 1, 2).float() / 255.0)
    verdicts = np.array([reading.accepted(row) for row in range(len(labels))])
    person = labels.accepted
    summary = verdict_scores(verdicts, person)
    accept = reading.probabilities["accept"][:, 1].numpy()
    summary["accept_auc"] = ranking_auc(accept, person)
    sure = labels.sure
    title = (
        f"judge audit: {summary['images']} generated images, agreement {summary['agreement']:.2f}, "
        f"false accepts {summary['false_accepts']:.2f}"
    )
    if sure.any():
        relabelled = labels.second != NOT_RELABELLED
        summary["eye_self_agreement"] = float(sure.sum() / relabelled.sum())
        summary["consensus"] = {
            **verdict_scores(verdicts[sure], person[sure]),
            "accept_auc": ranking_auc(accept[sure], person[sure]),
        }
        title += (
            f"; where two blind labellings agree ({int(sure.sum())}): agreement "
            f"{summary['consensus']['agreement']:.2f}, false accepts {summary['consensus']['false_accepts']:.2f}"
        )
    second = {1: "ok", 0: "NO", NOT_RELABELLED: ""}
    cells = [
        (
            Image.fromarray(labels.images[n]),
            f"eye {'ok' if person[n] else 'NO'}"
            + (f",{second[int(labels.second[n])]}" if labels.second[n] != NOT_RELABELLED else "")
            + f" / judge {'ok' if verdicts[n] else 'NO'}"
            + ("" if verdicts[n] == person[n] else " !"),
        )
        for n in range(len(labels))
    ]
    rows = [SheetRow("", cells[i : i + 10]) for i in range(0, len(cells), 10)]
    write_sheet(out, rows, title=title, columns=10)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    collecting = commands.add_parser("collect")
    collecting.add_argument("--run-dir", type=Path, default=Path("checkpoints/families"))
    collecting.add_argument("--model", type=Path, help="a pipeline folder instead of a checkpoint")
    collecting.add_argument("--count", type=int, default=100)
    collecting.add_argument("--first-seed", type=int, required=True)
    collecting.add_argument("--out", type=Path, required=True)
    collecting.add_argument("--threads", type=int, default=1)
    collecting.add_argument("--no-ema", action="store_true", help="the live weights (the EMA lags early in a run)")
    labelling = commands.add_parser("label")
    labelling.add_argument("--collection", type=Path, required=True)
    labelling.add_argument("--split", choices=SPLITS, required=True)
    labelling.add_argument("--rejected", default="", help="comma-separated image numbers a person rejects")
    relabelling = commands.add_parser("relabel", help="a second labelling, blind to the first, of a stored collection")
    relabelling.add_argument("--collection", type=Path, required=True)
    relabelling.add_argument("--rejected", default="", help="comma-separated image numbers rejected this time")
    unprompted = commands.add_parser("unprompted", help="empty-prompt generations, refused by rule")
    unprompted.add_argument("--run-dir", type=Path, default=Path("checkpoints/families"))
    unprompted.add_argument("--count", type=int, default=1500)
    unprompted.add_argument("--first-seed", type=int, required=True)
    unprompted.add_argument("--threads", type=int, default=1)
    auditing = commands.add_parser("audit")
    auditing.add_argument("--judge", type=Path)
    auditing.add_argument("--out", type=Path, default=Path("lab-report/judge-audit.png"))
    arguments = parser.parse_args(argv)
    if arguments.command == "collect":
        torch.set_num_threads(arguments.threads)
        if arguments.model is not None:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(arguments.model, local_files_only=True)
        else:
            from perfusion.world.basemodel.model import pipeline_from_checkpoint

            pipe, _ = pipeline_from_checkpoint(arguments.run_dir, not arguments.no_ema)
        collect(pipe, arguments.count, arguments.first_seed, arguments.out)
        print(arguments.out)
    elif arguments.command == "unprompted":
        from perfusion.world.basemodel.model import pipeline_from_checkpoint

        if UNPROMPTED_PATH.exists():
            raise SystemExit(f"eye_labels: {UNPROMPTED_PATH} exists; delete it first to collect afresh")

        torch.set_num_threads(arguments.threads)
        pipe, _ = pipeline_from_checkpoint(arguments.run_dir, True)
        labels = collect_unprompted(pipe, arguments.count, arguments.first_seed)
        write_numbered_sheets(labels.images[:PER_SHEET], labels.captions, Path("work/unprompted"), [""] * PER_SHEET)
        print(f"{UNPROMPTED_PATH}: {len(labels)} images")
    elif arguments.command in ("label", "relabel"):
        rejected = image_numbers(arguments.rejected)
        if arguments.command == "label":
            store = label(arguments.collection, arguments.split, rejected)
        else:
            store = relabel(arguments.collection, rejected)
        relabelled = int((store.second != NOT_RELABELLED).sum())
        print(
            f"{EYE_LABELS_PATH}: {len(store)} images ({int((~store.accepted).sum())} rejected; {relabelled} relabelled)"
        )
    else:
        from .judge import Judge

        judge = Judge.load(arguments.judge) if arguments.judge else Judge.load()
        print(json.dumps(audit(judge, EyeLabels.load().split("audit"), arguments.out), indent=1))


if __name__ == "__main__":
    main()
