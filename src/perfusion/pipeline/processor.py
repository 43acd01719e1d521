"""The diffusers attention processor that applies Perfusion's gated rank-one edit to K and V."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from perfusion.method import corrected, edit_readings, scoped


class PerfusionAttnProcessor:
    """Cross-attention with the edit of every concept whose token is in the row's prompt.

    Rows without a concept token (and every call outside a prompt that uses one) go through the
    layer's original processor untouched, so such prompts give exactly the stock output.
    """

    def __init__(self, original, runtime, layer: str):
        self.original = original
        self.runtime = runtime
        self.layer = layer

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        context = self.runtime.context
        if encoder_hidden_states is None or context is None or not (context.groups or context.regional):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if getattr(attn, "fused_projections", False):
            raise RuntimeError("perfusion edits to_k and to_v separately: call unfuse_qkv_projections() first")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key_states = context.key_encodings if context.key_encodings is not None else encoder_hidden_states
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            key_states = attn.norm_encoder_hidden_states(key_states)
        key, value = self.edit(attn, encoder_hidden_states, attn.to_k(key_states), attn.to_v(encoder_hidden_states))

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if context.regional is not None:
            record(context.regional, query, key, attn.scale)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def edit(self, attn, encodings: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """Apply each row group's edit; keys only under local locking (global locking re-encoded them)."""
        context = self.runtime.context
        for edit in self.edits(attn, encodings.device):
            rows = edit.rows
            coefficients, gates = edit_readings(
                encodings[rows], edit.basis_readout, edit.similarity_readouts, edit.betas, edit.taus
            )  # once for K and V
            readings = scoped(coefficients, gates, edit.scopes)
            value = value.index_copy(0, rows, corrected(value[rows], *readings, edit.value_basis, edit.value_targets))
            if context.key_encodings is None:
                key = key.index_copy(0, rows, corrected(key[rows], *readings, edit.key_basis, edit.key_targets))
        return key, value

    @torch.compiler.disable  # plans and caches are Python bookkeeping: a compiled UNet takes their tensors as inputs
    def edits(self, attn, device) -> list[RowsEdit]:
        """This call's row edits at this layer: prepared once per call (every denoising step reuses them), or at
        every step while training (o*_V moves at every optimizer step, so nothing is kept)."""
        context = self.runtime.context
        if torch.is_grad_enabled():
            return self.prepare(attn, context.groups, device)
        version = (self.layer, str(device), self.runtime.plans.generation, self.runtime.settings_version)
        if version not in context.prepared:
            context.prepared[version] = self.prepare(attn, context.groups, device)
        return context.prepared[version]

    def prepare(self, attn, groups, device) -> list[RowsEdit]:
        """Each group's plan, gates and targets; groups with as many concepts as each other (a mixed batch: one
        concept a row, each its own) in one edit, every row with its group's tensors stacked."""
        by_count: dict[int, list] = {}
        for group in groups:
            by_count.setdefault(len(group[0]), []).append(group)
        edits = []
        for same in by_count.values():
            parts = []
            for tokens, rows, fixed, scopes in same:
                plan = self.runtime.layer_plan(tokens, self.layer, attn, device)
                betas, taus = self.runtime.gates(tokens, device, fixed)
                value_targets = self.runtime.value_targets(tokens, self.layer, device)
                parts.append(
                    RowsEdit(
                        rows,
                        plan.basis_readout,
                        plan.similarity_readouts,
                        plan.value_basis,
                        plan.key_basis,
                        value_targets,
                        plan.key_targets,
                        betas,
                        taus,
                        scopes,
                    )
                )
            if len(parts) == 1:
                edits.append(parts[0])
                continue
            which = torch.cat([torch.full((len(part.rows),), n, device=device) for n, part in enumerate(parts)])

            def per_row(name):
                return torch.stack([getattr(part, name) for part in parts])[which]

            edits.append(
                RowsEdit(
                    torch.cat([part.rows for part in parts]),
                    *(per_row(name) for name in RowsEdit.STACKED),
                    per_row("betas")[:, None],
                    per_row("taus")[:, None],
                    merged_scopes(parts),
                )
            )
        return edits


@dataclass
class RowsEdit:
    """What one edit over some rows of a batch reads: (..., shape) below, or (R, ...) with each row's own."""

    STACKED = ("basis_readout", "similarity_readouts", "value_basis", "key_basis", "value_targets", "key_targets")
    rows: torch.Tensor  # (R,) batch rows
    basis_readout: torch.Tensor  # (d, k)
    similarity_readouts: torch.Tensor  # (d, N)
    value_basis: torch.Tensor  # W_V u_n, (out, k)
    key_basis: torch.Tensor  # W_K u_n, (out, k)
    value_targets: torch.Tensor  # o*_V, (out, N)
    key_targets: torch.Tensor  # o*_K, (out, N)
    betas: torch.Tensor  # (N,)
    taus: torch.Tensor  # (N,)
    scopes: torch.Tensor | None = None  # (R, T, N): where each concept's edit may act; None: everywhere


def merged_scopes(parts: list[RowsEdit]) -> torch.Tensor | None:
    """The gate scopes of several groups' rows, in their rows' order (ones for a group without one)."""
    if all(part.scopes is None for part in parts):
        return None
    shape = next(part.scopes.shape[1:] for part in parts if part.scopes is not None)
    return torch.cat(
        [
            part.scopes if part.scopes is not None else torch.ones(len(part.rows), *shape, device=part.rows.device)
            for part in parts
        ]
    )


@torch.compiler.disable  # regional composition's maps are summed in Python state across the call
def record(regional, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
    regional.record(query, key, scale)
