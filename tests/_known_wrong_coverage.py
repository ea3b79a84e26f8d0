"""Shared by the technique tests: which property of each contract rejects which known-wrong impl of
tests/known_wrong/<technique>.py on its own (`llmopt verify --property P`), so that every property is shown to reject
some bug (tests/test_known_wrong.py holds them to it)."""
from __future__ import annotations

from pathlib import Path

from llmopt.bench.verify import verify
from llmopt.impls import load_user_impl
from llmopt.reference import get_contract

KNOWN_WRONG = Path(__file__).parent / "known_wrong"

# spec_sampler: samplers whose acceptance or resampling rule is wrong; and those whose fault shows only in some calls:
# random numbers shared between rows, drafts past the fourth, a partial block of rows (odd T), a single-row call (its
# layout; its law)
RULE_BUGS = ("residual_q_minus_p", "acceptance_q_over_p", "unnormalized_residual_cdf", "one_uniform_for_all_positions",
             "bonus_from_draft")
CALL_SHAPE_BUGS = ("random_offsets_overlap_rows", "checks_at_most_four_drafts", "partial_block_resamples_from_target",
                   "pads_to_the_longest_row", "one_row_takes_the_residuals_argmax")

# technique -> (property, known-wrong impl it rejects on its own); every property of every contract appears
REJECTED_BY = {
    "attention": [
        ("matches_reference", "wrong_scale"),
        ("grads_match_reference", "backward_ignores_mask"),
        ("grads_match_reference", "dout_read_as_contiguous"),
        ("grads_match_reference", "forward_under_grad_drops_key_tail"),
        ("deterministic", "nondeterministic_output"),
        ("deterministic", "static_output_buffer"),
        ("no_input_mutation", "prescales_q_in_place"),
        ("empty_rows_are_zero", "finite_mask_value"),
        ("finite_where_reference_finite", "unguarded_softmax"),
    ],
    "paged_attention": [
        ("matches_reference", "off_by_one_at_block_boundary"),
        ("matches_reference", "q_read_with_contiguous_strides"),
        ("after_another_call", "one_output_buffer_per_shape"),
        ("after_another_call", "split_plan_cached_per_shape"),
        ("invariant_to_block_permutation", "physical_order_accumulation"),
        ("unused_slots_never_read", "unmasked_tail_values"),
        ("fork_children_exact", "prescales_keys_in_place"),
        ("gqa_head_mapping", "wrong_gqa_mapping"),
        ("deterministic", "racy_split_combine"),
        ("no_input_mutation", "prescales_keys_in_place"),
    ],
    "kv_cache": [
        ("matches_reference", "loses_position_at_growth"),
        ("matches_reference", "cache_capped_at_32_positions"),
        ("matches_reference", "hard_coded_rope_theta"),
        ("after_another_call", "prefix_cache_keyed_on_prompt_tokens"),
        ("no_input_mutation", "folds_norms_into_weights_in_place"),
    ],
    "spec_sampler": [
        *(("emitted_law", func) for func in (*RULE_BUGS, "resample_from_target", "pads_with_zero", "first_row_for_all",
                                             *CALL_SHAPE_BUGS, "fractional_acceptance_two_percent_low")),
        ("one_hot_target_is_greedy", "acceptance_q_over_p"),
        ("one_hot_target_is_greedy", "bonus_from_draft"),
        ("reproducible_with_generator", "ignores_generator"),
        ("no_input_mutation", "residual_in_place"),
    ],
    "lora": [
        ("matches_reference", "ignores_scaling"),
        ("grads_match_reference", "lora_a_frozen"),
        ("grads_match_reference", "base_blocks_input_grad"),
        ("grads_match_reference", "trains_the_base"),
        ("backward_after_in_place_updates", "inputs_kept_on_ctx"),
        ("zero_update_is_the_base", "base_split_when_adapted"),
        ("merge_equivalence", "ignores_scaling"),
        ("deterministic", "dropout_left_on"),
        ("no_input_mutation", "merges_in_place"),
        ("matches_reference", "update_untransposed_when_square"),
        ("matches_reference", "expand_tile_without_loop"),
        ("grads_match_reference", "backward_reads_dy_row_major"),
        ("matches_reference", "flattens_batch_by_its_last_stride"),
        ("merge_equivalence", "output_in_one_buffer"),
        ("follows_in_place_updates", "merged_weight_kept_by_identity"),
        ("matches_reference", "rank_tile_without_loop"),
        ("matches_reference", "vector_x_kept_as_a_row"),
        ("matches_reference", "row_stride_from_column_stride"),
        ("matches_reference", "weight_read_from_storage_start"),
        ("matches_reference", "scaling_held_in_bfloat16"),
        ("grads_match_reference", "no_graph_without_an_adapter"),
        ("matches_reference", "zero_scaling_taken_as_unset"),
        ("grads_match_reference", "backward_writes_dx_into_x"),
        ("grads_match_reference", "backward_scales_saved_shrink"),
        ("grads_match_reference", "long_prefill_merged_without_grad"),
        ("grads_match_reference", "frozen_adapter_merged_without_grad"),
        ("deterministic", "inference_turns_grad_mode_off"),
    ],
    "qlora": [
        ("matches_reference", "absmax_codes_as_scales"),
        ("grads_match_reference", "lora_a_frozen"),
        ("backward_after_in_place_updates", "recomputes_from_inputs_on_ctx"),
        ("zero_update_is_the_base", "base_split_when_adapted"),
        ("deterministic", "dropout_left_on"),
        ("no_input_mutation", "folds_scaling_into_x"),
        ("matches_reference", "first_double_quant_scale_only"),
        ("matches_reference", "short_last_block_takes_the_previous_absmax"),
        ("follows_in_place_updates", "dequantized_base_kept_by_address"),
        ("matches_reference", "many_tokens_drop_the_offset"),
        ("matches_reference", "adapter_read_as_dense_rows"),
        ("matches_reference", "many_tokens_first_double_quant_scale"),
    ],
    "dora": [
        ("matches_reference", "norm_of_base_only"),
        ("grads_match_reference", "norm_not_detached"),
        ("backward_after_in_place_updates", "recomputes_from_inputs_on_ctx"),
        ("equals_base_at_init", "norm_over_outputs"),
        ("merge_equivalence", "magnitude_ignored"),
        ("deterministic", "dropout_left_on"),
        ("no_input_mutation", "normalizes_magnitude_in_place"),
        ("matches_reference", "scales_columns_when_square"),
        ("matches_reference", "norm_over_first_tile"),
        ("follows_in_place_updates", "norm_kept_by_identity"),
        ("grads_match_reference", "direction_buffer_shared_by_shape"),
        ("grads_match_reference", "frozen_factors_merged_without_grad"),
        ("grads_match_reference", "long_prefill_merged_without_grad"),
    ],
    "nf4": [
        ("layout_and_scales", "absmax_per_row"),
        ("layout_and_scales", "block_boundary_off_by_one"),
        ("layout_and_scales", "double_quant_without_mean"),
        ("codes_match_bitsandbytes", "seed_symmetric_codebook"),
        ("codes_match_bitsandbytes", "swapped_nibbles"),
        ("codes_match_bitsandbytes", "absmax_codes_rounded_down"),
        ("dequantize_decodes_state", "dequantizes_in_output_dtype"),
        ("roundtrip_within_half_gap", "seed_symmetric_codebook"),
        ("layout_and_scales", "pads_odd_count_with_code_zero"),
        ("dequantize_decodes_state", "double_quant_absmax_fused_decode"),
        ("codes_match_bitsandbytes", "top_threshold_typed_short"),
        ("layout_and_scales", "absmax_over_first_512"),
        ("layout_and_scales", "offset_over_first_1024_absmax"),
        ("no_input_mutation", "writes_dequantized_back_into_w"),
        ("follows_in_place_updates", "state_kept_by_address"),
        ("follows_in_place_updates", "codes_in_one_buffer"),
    ],
    "nf4_matmul": [
        ("matches_reference", "low_nibble_first"),
        ("matches_reference", "forgets_double_quant_offset"),
        ("matches_reference", "absmax_indexed_by_row"),
        ("matches_reference", "half_precision_accumulation"),
        ("deterministic", "split_k_random_order"),
        ("no_input_mutation", "rescales_x_in_place"),
        ("matches_reference", "output_transposed_when_square"),
        ("deterministic", "first_call_sums_in_another_order"),
        ("follows_in_place_updates", "dequantized_weight_kept_by_address"),
        ("follows_in_place_updates", "weight_cached_on_its_codes"),
        ("matches_reference", "half_precision_sum_over_k_tiles"),
        ("matches_reference", "absmax_by_k_tile"),
        ("matches_reference", "vector_x_kept_as_a_row"),
        ("matches_reference", "double_quant_scale_once_a_row"),
    ],
}


def assert_rejects(technique: str, prop: str, func: str) -> None:
    impl = load_user_impl(technique, f"{KNOWN_WRONG / technique}.py:{func}")
    outcome = verify(get_contract(technique), impl, "cpu", only=[prop])
    (result,) = outcome.properties
    assert result.status == "fail", f"{technique}/{func} passes {prop} on {result.examples} cases"
