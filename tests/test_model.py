"""The model against Hugging Face's DeepseekV3ForCausalLM, both directions, plus MoE balancing and MTP."""
import pytest
import torch

from conftest import tiny_config
from r1lab.model import Transformer, expert_load, load_model, save_checkpoint, update_router_bias

transformers = pytest.importorskip("transformers")

VARIANTS = {
    "mla-moe": {},
    "mla-dense": {"mlp": "dense"},
    "q-lora": {"q_lora_rank": 24},
    "group-routing": {"n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5},
    "yarn": {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                              "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}},
    "mtp": {"num_nextn_predict_layers": 1},
    "no-interleave": {"rope_interleave": False, "norm_topk_prob": False},
}


def _randomize_router_bias(model):
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0, 0.05)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_loads_our_checkpoint_with_same_logits(tmp_path, tokenizer, variant):
    torch.manual_seed(0)
    model = Transformer(tiny_config(tokenizer.vocab_size, **VARIANTS[variant])).eval()
    _randomize_router_bias(model)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    assert type(hf).__name__ == "DeepseekV3ForCausalLM"
    ids = torch.randint(0, tokenizer.vocab_size, (2, 37))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == (2, 37, tokenizer.vocab_size)
    assert (ours - theirs).abs().max().item() <= 1e-4
    # and our own loader gives the same model back
    with torch.no_grad():
        again = load_model(tmp_path / "ckpt")(ids)
    assert (ours - again).abs().max().item() <= 1e-5


@pytest.mark.parametrize("q_lora_rank", [None, 24])
def test_checkpoint_saved_by_transformers_loads_with_same_logits(tmp_path, q_lora_rank):
    torch.manual_seed(0)
    config = transformers.DeepseekV3Config(
        vocab_size=300, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        n_group=2, topk_group=1, first_k_dense_replace=1, q_lora_rank=q_lora_rank, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=128, num_mtp_layers=0,
    )
    hf = transformers.DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():  # transformers initialises the experts and router bias to zero-ish; make them matter
        for p in hf.parameters():
            p.normal_(0, 0.05) if p.dim() > 1 else None
        _randomize_router_bias(hf)
    hf.save_pretrained(tmp_path / "hf")
    import r1lab

    model, tok = r1lab.load(tmp_path / "hf")
    assert tok is None  # no tokenizer was saved
    ids = torch.randint(0, 300, (2, 29))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_aux_loss_free_bias_evens_a_skewed_router():
    from r1lab.model.moe import MoE

    torch.manual_seed(0)
    cfg = tiny_config(64, bias_update_speed=0.01)
    moe = MoE(cfg).train()
    torch.nn.init.normal_(moe.gate.weight, 0, 0.1)
    with torch.no_grad():  # skew: the inputs share a common direction that experts 0 and 1 love
        moe.gate.weight[:2] += 0.05
    x = 1.0 + 0.5 * torch.randn(8, 32, cfg.hidden_size)

    def step():
        with torch.no_grad():
            moe(x)
        share = torch.tensor(expert_load(moe)[0])
        update_router_bias(moe)
        return share.max().item() * cfg.n_routed_experts  # 1.0 = perfectly even

    imbalance = [step() for _ in range(150)]
    late = sum(imbalance[-20:]) / 20
    print(f"max-load / even-load: first step {imbalance[0]:.2f}, mean of the last 20 steps {late:.2f}")
    assert imbalance[0] > 3.0  # experts 0 and 1 take nearly every token
    assert late < 2.0 and late < imbalance[0] / 2


def test_mtp_and_balance_losses_train():
    torch.manual_seed(0)
    cfg = tiny_config(64, num_nextn_predict_layers=2, seq_aux_loss_alpha=0.01)
    model = Transformer(cfg).train()
    ids = torch.randint(0, 64, (4, 16))
    loss, parts = model.loss(ids, ids)
    assert {"lm_loss", "mtp_loss", "balance_loss"} <= set(parts)
    loss.backward()
    assert model.mtp[1].eh_proj.weight.grad.abs().sum() > 0


def test_mha_switch_and_accounting():
    dense = Transformer(tiny_config(64, mlp="dense"))
    mha = Transformer(tiny_config(64, attention="mha"))
    assert mha(torch.randint(0, 64, (1, 5))).shape == (1, 5, 64)
    counts = Transformer(tiny_config(64)).param_count()
    assert counts["activated"] < counts["total"]
    assert dense.param_count()["activated"] == dense.param_count()["total"]
    assert dense.flops_per_token(128) > 6 * (dense.param_count()["total"] - dense.param_count()["embedding"])
