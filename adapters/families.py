"""Built-in architecture specs. Paths follow the Hugging Face ``*ForCausalLM`` implementations."""

from editmem.adapters.base import ArchitectureSpec, register_architecture

#: Llama and its descendants share one layout (SmolLM2 is a Llama). Phi-3 is not one of them: its MLP fuses the gate
#: and up projections (``gate_up_proj``).
LLAMA_LIKE = register_architecture(
    ArchitectureSpec(
        model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "smollm3"),
        embed_tokens="model.embed_tokens",
        layers="model.layers",
        final_norm="model.norm",
        lm_head="lm_head",
        attn="self_attn",
        mlp="mlp",
        mlp_in="mlp.up_proj",
        mlp_out="mlp.down_proj",
        extra={"mlp_gate": "mlp.gate_proj"},
    )
)

GPT2 = register_architecture(
    ArchitectureSpec(
        model_types=("gpt2",),
        embed_tokens="transformer.wte",
        layers="transformer.h",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        attn="attn",
        mlp="mlp",
        mlp_in="mlp.c_fc",
        mlp_out="mlp.c_proj",
        mlp_weights_transposed=True,
        absolute_positions=True,
    )
)

GPTJ = register_architecture(
    ArchitectureSpec(
        model_types=("gptj",),
        embed_tokens="transformer.wte",
        layers="transformer.h",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        attn="attn",
        mlp="mlp",
        mlp_in="mlp.fc_in",
        mlp_out="mlp.fc_out",
    )
)

GPT_NEOX = register_architecture(
    ArchitectureSpec(
        model_types=("gpt_neox",),
        embed_tokens="gpt_neox.embed_in",
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="lm_head",
        attn="attention",
        mlp="mlp",
        mlp_in="mlp.dense_h_to_4h",
        mlp_out="mlp.dense_4h_to_h",
    )
)
