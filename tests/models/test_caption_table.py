"""Caption tables: masks optional (ones), any embedding width, the writer importable from ditq.models."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ditq.errors import DitqError


def test_save_caption_table_is_importable_from_ditq_models():
    from ditq.artifacts.captions import save_caption_table as original
    from ditq.models import save_caption_table, save_pipeline_captions

    assert save_caption_table is original and callable(save_pipeline_captions)
    with pytest.raises(ImportError):
        from ditq.models import no_such_name  # noqa: F401


def test_caption_table_without_masks_attends_to_every_token(tmp_path):
    from ditq.artifacts.captions import load_caption_table

    embeds, null = torch.randn(3, 5, 7), torch.randn(1, 5, 7)  # D = 7: any width works
    save_file({"prompt_embeds": embeds, "null_prompt_embeds": null}, str(tmp_path / "c.safetensors"))
    table = load_caption_table(tmp_path / "c.safetensors")
    cond = table.cond([0, 2])
    assert torch.equal(cond["encoder_hidden_states"], embeds[[0, 2]])
    assert torch.equal(cond["encoder_attention_mask"], torch.ones(2, 5))
    assert torch.equal(table.null(2)["encoder_attention_mask"], torch.ones(2, 5))


def test_save_caption_table_writes_ones_for_missing_masks(tmp_path):
    from ditq.artifacts.captions import load_caption_table
    from ditq.models import save_caption_table

    save_caption_table(tmp_path / "c.safetensors", torch.randn(2, 4, 3), None, torch.randn(1, 4, 3))
    table = load_caption_table(tmp_path / "c.safetensors")
    assert table.num == 2 and torch.equal(table.mask, torch.ones(2, 4)) and torch.equal(table.null_mask,
                                                                                        torch.ones(1, 4))


def test_a_table_in_the_wrong_format_names_every_key_and_the_importable_writer(tmp_path):
    from ditq.artifacts.captions import load_caption_table

    save_file({"embeds": torch.randn(2, 4, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(DitqError) as err:
        load_caption_table(tmp_path / "bad.safetensors")
    msg = str(err.value)
    for key in ("prompt_embeds [N, L, D]", "null_prompt_embeds [1, L, D]", "prompt_attention_mask",
                "null_prompt_attention_mask", "all ones when absent", "ditq.models.save_caption_table"):
        assert key in msg, key
    assert "\n" not in msg
