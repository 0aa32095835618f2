"""Bad input for every public op (issue 7, "Hardening"), table-driven: each (op, case) must raise a
Python exception whose message names the offending argument, never crash, hang or return garbage.
Inputs that are unusual but legal (non-contiguous, expanded with stride 0, empty, NaN / inf) must
give the reference's result.

The per-family files already hold a few bad-input cases each; this table covers every op and the
classes of DESIGN.md's testing section in one place. The C++ backend runs everything; the Triton
backend (interpreter) runs a few representative cases; the device cases need a GPU."""
import re
import sys

import pytest
import torch

import scangraph
from scangraph import CSRGraph, reference
from conftest import HAS_CUDA, _available
from graphs import make_graph

HEADS, DIM, DIM_V = 2, 5, 3
INT32_MAX = torch.iinfo(torch.int32).max


# ---- base inputs: small, random, valid; each case changes one thing ---------------------------
def _scan(**changes):
    args = dict(u=torch.randn(1, 4, 8), delta=torch.rand(1, 4, 8), A=-torch.rand(4, 3),
                B=torch.randn(1, 2, 3, 8), C=torch.randn(1, 2, 3, 8))
    args.update(changes)
    return args


def _step(**changes):
    args = dict(state=torch.randn(2, 4, 3), x=torch.randn(2, 4), dt=torch.rand(2, 4), A=-torch.rand(4, 3),
                B=torch.randn(2, 3), C=torch.randn(2, 3))
    args.update(changes)
    return args


def _conv(**changes):
    args = dict(x=torch.randn(2, 4, 7), weight=torch.randn(4, 3), bias=torch.randn(4))
    args.update(changes)
    return args


def _conv_step(**changes):
    args = dict(x=torch.randn(2, 4), conv_state=torch.randn(2, 4, 3), weight=torch.randn(4, 3), bias=torch.randn(4))
    args.update(changes)
    return args


def _qkv(batch=2, seqlen=5):
    return (torch.randn(HEADS, DIM), torch.randn(batch, seqlen, HEADS, DIM), torch.randn(batch, seqlen, HEADS, DIM_V))


def _state(batch=2):
    return (torch.randn(batch, HEADS), torch.rand(batch, HEADS) + 0.5, torch.randn(batch, HEADS, DIM_V))


def _graph():
    return make_graph("random")  # 40 nodes, duplicates and self loops


def _cu(*offsets):
    return torch.tensor(offsets, dtype=torch.int32)


ss, ssu = scangraph.selective_scan, scangraph.selective_state_update
cc, ccu = scangraph.causal_conv1d_fn, scangraph.causal_conv1d_update
pa, pas = scangraph.prefix_attention, scangraph.prefix_attention_step


def _pa_cu(cu):
    q, k, v = _qkv(1, 5)
    return pa(q, k, v, cu_seqlens=cu)


def _qt(shape=(4, 6), bits=8, axis=0, quantize=scangraph.quantize):  # the public one, also when swapped
    return quantize(torch.randn(*shape), bits, axis)


# The CPU lowp kernels raise "<op>: x holds NaN or inf" (csrc/cpu/lowp_common.h), naming the float input.
NAN_MESSAGE = r"\bx\b.*NaN or inf"


def _unvalidated(rowptr, col):
    """A graph built with validate=False: the C++ ops check indices themselves."""
    return CSRGraph(torch.tensor(rowptr), torch.tensor(col), num_cols=3, validate=False)


# (call, accepted exception types, regex the message must match: it names the argument)
CASES = {
    # -- selective_scan ----------------------------------------------------------------------
    ("selective_scan", "u not a tensor"): (lambda: ss(**_scan(u=[[1.0]])), TypeError, r"\bu must be"),
    ("selective_scan", "u rank 2"): (lambda: ss(**_scan(u=torch.randn(4, 8))), ValueError, r"\bu must be"),
    ("selective_scan", "u int"): (lambda: ss(**_scan(u=torch.ones(1, 4, 8, dtype=torch.int32))), TypeError,
                                  r"\bu must be"),
    ("selective_scan", "delta shape"): (lambda: ss(**_scan(delta=torch.rand(1, 4, 7))), ValueError, "delta"),
    ("selective_scan", "delta dtype"): (lambda: ss(**_scan(delta=torch.rand(1, 4, 8).double())), TypeError,
                                        "delta"),
    ("selective_scan", "A rank 1"): (lambda: ss(**_scan(A=-torch.rand(4))), ValueError, r"\bA must be"),
    ("selective_scan", "A wrong dim"): (lambda: ss(**_scan(A=-torch.rand(5, 3))), ValueError, r"\bA must be"),
    ("selective_scan", "A int"): (lambda: ss(**_scan(A=-torch.ones(4, 3, dtype=torch.int64))), TypeError,
                                  r"\bA must be"),
    ("selective_scan", "A complex"): (lambda: ss(**_scan(A=-torch.rand(4, 3, dtype=torch.complex64))), TypeError,
                                      "complex A"),
    ("selective_scan", "N = 0"): (lambda: ss(**_scan(A=-torch.rand(4, 0), B=torch.randn(1, 2, 0, 8),
                                                     C=torch.randn(1, 2, 0, 8))), ValueError, r"A\.shape"),
    ("selective_scan", "B rank 5"): (lambda: ss(**_scan(B=torch.randn(1, 1, 2, 3, 8))), ValueError, r"\bB must be"),
    ("selective_scan", "B wrong L"): (lambda: ss(**_scan(B=torch.randn(1, 2, 3, 9))), ValueError, r"varying B"),
    ("selective_scan", "B wrong N"): (lambda: ss(**_scan(B=torch.randn(4, 2))), ValueError, r"fixed B"),
    ("selective_scan", "C dtype"): (lambda: ss(**_scan(C=torch.randn(1, 2, 3, 8).double())), TypeError, r"\bC\b"),
    ("selective_scan", "C groups"): (lambda: ss(**_scan(C=torch.randn(1, 1, 3, 8))), ValueError, r"\bB and C"),
    ("selective_scan", "D shape"): (lambda: ss(**_scan(D=torch.randn(5))), ValueError, r"\bD must"),
    ("selective_scan", "D int"): (lambda: ss(**_scan(D=torch.ones(4, dtype=torch.int64))), TypeError, r"\bD must"),
    ("selective_scan", "z shape"): (lambda: ss(**_scan(z=torch.randn(1, 4, 7))), ValueError, r"\bz must"),
    ("selective_scan", "z dtype"): (lambda: ss(**_scan(z=torch.randn(1, 4, 8).double())), TypeError, r"\bz must"),
    ("selective_scan", "delta_bias shape"): (lambda: ss(**_scan(delta_bias=torch.randn(4, 1))), ValueError,
                                             "delta_bias"),
    ("selective_scan", "initial_state shape"): (lambda: ss(**_scan(initial_state=torch.randn(1, 4, 2))), ValueError,
                                                "initial_state"),
    ("selective_scan", "initial_state int"): (lambda: ss(**_scan(initial_state=torch.ones(1, 4, 3, dtype=torch.int32))),
                                              TypeError, "initial_state"),
    ("selective_scan", "cu_seqlens int64"): (lambda: ss(**_scan(cu_seqlens=torch.tensor([0, 8]))), TypeError,
                                             "cu_seqlens"),
    ("selective_scan", "cu_seqlens 2-D"): (lambda: ss(**_scan(cu_seqlens=_cu(0, 8)[None])), ValueError, "cu_seqlens"),
    ("selective_scan", "cu_seqlens short of L"): (lambda: ss(**_scan(cu_seqlens=_cu(0, 3, 7))), ValueError,
                                                  "cu_seqlens"),
    ("selective_scan", "cu_seqlens past L"): (lambda: ss(**_scan(cu_seqlens=_cu(0, 3, 9))), ValueError, "cu_seqlens"),
    ("selective_scan", "cu_seqlens negative"): (lambda: ss(**_scan(cu_seqlens=_cu(0, -2, 8))), ValueError,
                                                "cu_seqlens"),
    ("selective_scan", "cu_seqlens past L inside"): (lambda: ss(**_scan(cu_seqlens=_cu(0, 12, 8))), ValueError,
                                                     "cu_seqlens"),
    ("selective_scan", "cu_seqlens start"): (lambda: ss(**_scan(cu_seqlens=_cu(1, 8))), ValueError, "cu_seqlens"),
    ("selective_scan", "cu_seqlens one offset"): (lambda: ss(**_scan(cu_seqlens=_cu(8))), ValueError, "cu_seqlens"),
    ("selective_scan", "cu_seqlens batch 2"): (
        lambda: ss(**_scan(u=torch.randn(2, 4, 8), delta=torch.rand(2, 4, 8), B=torch.randn(2, 2, 3, 8),
                           C=torch.randn(2, 2, 3, 8), cu_seqlens=_cu(0, 8))), ValueError, "cu_seqlens"),
    ("selective_scan", "cu_seqlens initial_state count"): (
        lambda: ss(**_scan(cu_seqlens=_cu(0, 3, 8), initial_state=torch.randn(1, 4, 3))), ValueError,
        "initial_state"),
    # -- causal_conv1d_fn / causal_conv1d_update -----------------------------------------------
    ("causal_conv1d_fn", "x int"): (lambda: cc(**_conv(x=torch.ones(2, 4, 7, dtype=torch.int32))), TypeError,
                                    r"\bx must"),
    ("causal_conv1d_fn", "x rank 2"): (lambda: cc(**_conv(x=torch.randn(4, 7))), ValueError, r"\bx must"),
    ("causal_conv1d_fn", "weight int"): (lambda: cc(**_conv(weight=torch.ones(4, 3, dtype=torch.int64))), TypeError,
                                         r"\bweight must"),
    ("causal_conv1d_fn", "weight wide"): (lambda: cc(**_conv(weight=torch.randn(4, 5))), ValueError,
                                          r"\bweight must"),
    ("causal_conv1d_fn", "weight 3-D"): (lambda: cc(**_conv(weight=torch.randn(4, 1, 3))), ValueError,
                                         r"\bweight must"),
    ("causal_conv1d_fn", "weight dim"): (lambda: cc(**_conv(weight=torch.randn(5, 3))), ValueError, r"\bweight must"),
    ("causal_conv1d_fn", "bias shape"): (lambda: cc(**_conv(bias=torch.randn(3))), ValueError, r"\bbias must"),
    ("causal_conv1d_fn", "bias int"): (lambda: cc(**_conv(bias=torch.ones(4, dtype=torch.int32))), TypeError,
                                       r"\bbias must"),
    ("causal_conv1d_fn", "seq_idx int64"): (lambda: cc(**_conv(seq_idx=torch.zeros(2, 7, dtype=torch.int64))),
                                            TypeError, r"\bseq_idx must"),
    ("causal_conv1d_fn", "seq_idx shape"): (lambda: cc(**_conv(seq_idx=torch.zeros(2, 6, dtype=torch.int32))),
                                            ValueError, r"\bseq_idx must"),
    ("causal_conv1d_fn", "initial_states shape"): (lambda: cc(**_conv(initial_states=torch.randn(2, 4, 3))),
                                                   ValueError, r"\binitial_states must"),
    ("causal_conv1d_fn", "initial_states dtype"): (
        lambda: cc(**_conv(initial_states=torch.randn(2, 4, 2, dtype=torch.float64))), TypeError,
        r"\binitial_states must"),
    ("causal_conv1d_fn", "seq_idx with initial_states"): (
        lambda: cc(**_conv(seq_idx=torch.zeros(2, 7, dtype=torch.int32), initial_states=torch.randn(2, 4, 2))),
        ValueError, r"seq_idx and initial_states"),
    ("causal_conv1d_fn", "final states with seq_idx"): (
        lambda: cc(**_conv(seq_idx=torch.zeros(2, 7, dtype=torch.int32), return_final_states=True)), ValueError,
        r"return_final_states"),
    ("causal_conv1d_fn", "activation"): (lambda: cc(**_conv(activation="relu")), NotImplementedError,
                                         r"\bactivation must"),
    ("causal_conv1d_update", "x rank 4"): (lambda: ccu(**_conv_step(x=torch.randn(2, 4, 1, 1))), ValueError,
                                           r"\bx must"),
    ("causal_conv1d_update", "conv_state dtype"): (
        lambda: ccu(**_conv_step(conv_state=torch.randn(2, 4, 3, dtype=torch.float64))), TypeError,
        r"\bconv_state must"),
    ("causal_conv1d_update", "conv_state short"): (lambda: ccu(**_conv_step(conv_state=torch.randn(2, 4, 1))),
                                                   ValueError, r"\bconv_state must"),
    ("causal_conv1d_update", "conv_state rows"): (lambda: ccu(**_conv_step(conv_state=torch.randn(3, 4, 3))),
                                                  ValueError, r"\bconv_state must"),
    ("causal_conv1d_update", "cache_seqlens int64"): (
        lambda: ccu(**_conv_step(cache_seqlens=torch.zeros(2, dtype=torch.int64))), TypeError,
        r"\bcache_seqlens must"),
    ("causal_conv1d_update", "conv_state_indices shape"): (
        lambda: ccu(**_conv_step(conv_state_indices=torch.zeros(3, dtype=torch.int32))), ValueError,
        r"\bconv_state_indices must"),
    ("causal_conv1d_update", "conv_state_indices past the slots"): (
        lambda: ccu(**_conv_step(conv_state_indices=torch.tensor([0, 2], dtype=torch.int32))), ValueError,
        r"\bconv_state_indices holds slot 2"),
    ("causal_conv1d_update", "activation"): (lambda: ccu(**_conv_step(activation="gelu")), NotImplementedError,
                                             r"\bactivation must"),
    # -- selective_state_update -------------------------------------------------------------
    ("selective_state_update", "x rank 4"): (lambda: ssu(**_step(x=torch.randn(2, 4, 1, 1))), ValueError, r"\bx must"),
    ("selective_state_update", "heads: A 2-D"): (lambda: ssu(**_step(x=torch.randn(2, 2, 2), dt=torch.rand(2, 2, 2))),
                                                 ValueError, r"\bA must"),
    ("selective_state_update", "slots dtype"): (lambda: ssu(**_step(state_batch_indices=torch.zeros(2))), ValueError,
                                               "state_batch_indices must"),
    ("selective_state_update", "x int"): (lambda: ssu(**_step(x=torch.ones(2, 4, dtype=torch.int64))), TypeError,
                                          r"\bx must"),
    ("selective_state_update", "dt shape"): (lambda: ssu(**_step(dt=torch.rand(2, 5))), ValueError, r"\bdt must"),
    ("selective_state_update", "dt dtype"): (lambda: ssu(**_step(dt=torch.rand(2, 4).double())), TypeError,
                                             r"\bdt must"),
    ("selective_state_update", "A wrong dim"): (lambda: ssu(**_step(A=-torch.rand(3, 3))), ValueError, r"\bA must"),
    ("selective_state_update", "state shape"): (lambda: ssu(**_step(state=torch.randn(2, 4, 2))), ValueError,
                                                r"\bstate must"),
    ("selective_state_update", "state int"): (lambda: ssu(**_step(state=torch.ones(2, 4, 3, dtype=torch.int32))),
                                              TypeError, r"\bstate must"),
    ("selective_state_update", "B wrong N"): (lambda: ssu(**_step(B=torch.randn(2, 4))), ValueError, r"\bB must"),
    ("selective_state_update", "C groups"): (lambda: ssu(**_step(C=torch.randn(2, 3, 3))), ValueError, r"\bC must"),
    ("selective_state_update", "C int"): (lambda: ssu(**_step(C=torch.ones(2, 3, dtype=torch.int32))), TypeError,
                                          r"\bC must"),
    ("selective_state_update", "D shape"): (lambda: ssu(**_step(D=torch.randn(3))), (ValueError, RuntimeError),
                                            r"\bD must"),
    ("selective_state_update", "z shape"): (lambda: ssu(**_step(z=torch.randn(2, 3))), (ValueError, RuntimeError),
                                            r"\bz must"),
    ("selective_state_update", "dt_bias shape"): (lambda: ssu(**_step(dt_bias=torch.randn(4, 1))),
                                                  (ValueError, RuntimeError), r"dt_bias must"),
    # -- prefix_attention -------------------------------------------------------------------
    ("prefix_attention", "q not a tensor"): (lambda: pa(1.0, *_qkv()[1:]), TypeError, r"\bq must be"),
    ("prefix_attention", "k rank 3"): (lambda: pa(_qkv()[0], _qkv()[1][0], _qkv()[2]), ValueError, r"\bk must be"),
    ("prefix_attention", "v wrong L"): (lambda: pa(_qkv()[0], _qkv()[1], _qkv(2, 4)[2]), ValueError, r"\bv must be"),
    ("prefix_attention", "q wrong heads"): (lambda: pa(torch.randn(3, DIM), *_qkv()[1:]), ValueError, r"\bq must"),
    ("prefix_attention", "q dtype"): (lambda: pa(_qkv()[0].double(), *_qkv()[1:]), TypeError, r"\bq must"),
    ("prefix_attention", "v int"): (lambda: pa(*_qkv()[:2], torch.ones(2, 5, HEADS, DIM_V, dtype=torch.int32)),
                                    TypeError, r"\bv must"),
    ("prefix_attention", "state shape"): (lambda: pa(*_qkv(), initial_state=_state(3)), ValueError, "initial_state"),
    ("prefix_attention", "state int"): (
        lambda: pa(*_qkv(), initial_state=(torch.zeros(2, HEADS, dtype=torch.int64),) + _state()[1:]), TypeError,
        "initial_state"),
    ("prefix_attention", "state pair"): (lambda: pa(*_qkv(), initial_state=_state()[:2]), TypeError, "initial_state"),
    ("prefix_attention", "cu_seqlens int64"): (lambda: _pa_cu(torch.tensor([0, 5])), TypeError, "cu_seqlens"),
    ("prefix_attention", "cu_seqlens one offset"): (lambda: _pa_cu(_cu(5)), ValueError, "cu_seqlens"),
    ("prefix_attention", "cu_seqlens list"): (lambda: _pa_cu([0, 5]), TypeError, "cu_seqlens"),
    ("prefix_attention", "cu_seqlens empty"): (lambda: _pa_cu(_cu()), ValueError, "cu_seqlens"),
    ("prefix_attention", "cu_seqlens short of L"): (lambda: _pa_cu(_cu(0, 2, 4)), ValueError, "cu_seqlens"),
    ("prefix_attention", "cu_seqlens past L inside"): (lambda: _pa_cu(_cu(0, 9, 5)), ValueError, "cu_seqlens"),
    ("prefix_attention", "cu_seqlens negative"): (lambda: _pa_cu(_cu(0, -1, 5)), ValueError, "cu_seqlens"),
    ("prefix_attention", "cu_seqlens start"): (lambda: _pa_cu(_cu(2, 5)), ValueError, "cu_seqlens"),
    ("prefix_attention", "cu_seqlens batch 2"): (lambda: pa(*_qkv(), cu_seqlens=_cu(0, 5)), ValueError, "cu_seqlens"),
    # -- prefix_attention_step --------------------------------------------------------------
    ("prefix_attention_step", "k_t rank 4"): (lambda: pas(_state(), *_qkv()), ValueError, r"\bk must be"),
    ("prefix_attention_step", "v_t heads"): (
        lambda: pas(_state(), _qkv()[0], _qkv()[1][:, 0], torch.randn(2, 3, DIM_V)), ValueError, r"\bv must be"),
    ("prefix_attention_step", "state shape"): (
        lambda: pas(_state(3), _qkv()[0], _qkv()[1][:, 0], _qkv()[2][:, 0]), ValueError, r"\bstate m"),
    ("prefix_attention_step", "state dtype"): (
        lambda: pas(tuple(t.double() for t in _state()), _qkv()[0], _qkv()[1][:, 0], _qkv()[2][:, 0]), ValueError,
        r"\bstate m"),
    ("prefix_attention_step", "state non-contiguous"): (
        lambda: pas((torch.randn(HEADS, 2).t(),) + _state()[1:], _qkv()[0], _qkv()[1][:, 0], _qkv()[2][:, 0]),
        ValueError, r"\bstate m .*contiguous"),
    ("prefix_attention_step", "state not a triple"): (
        lambda: pas(_state()[0], _qkv()[0], _qkv()[1][:, 0], _qkv()[2][:, 0]), TypeError, r"\bstate must"),
    # -- spmm ---------------------------------------------------------------------------------
    ("spmm", "graph not a CSRGraph"): (lambda: scangraph.spmm(torch.eye(3), torch.randn(3, 2)), TypeError, "graph"),
    ("spmm", "x rank 1"): (lambda: scangraph.spmm(_graph(), torch.randn(40)), ValueError, r"\bx must be"),
    ("spmm", "x rank 4"): (lambda: scangraph.spmm(_graph(), torch.randn(40, 1, 2, 3)), ValueError, r"\bx must be"),
    ("spmm", "x rows"): (lambda: scangraph.spmm(_graph(), torch.randn(39, 3)), ValueError, r"\bx must have 40 rows"),
    ("spmm", "x int"): (lambda: scangraph.spmm(_graph(), torch.ones(40, 3, dtype=torch.int64)), TypeError,
                        r"\bx must be"),
    ("spmm", "x bool"): (lambda: scangraph.spmm(_graph(), torch.ones(40, 3, dtype=torch.bool)), TypeError,
                         r"\bx must be"),
    ("spmm", "reduce"): (lambda: scangraph.spmm(_graph(), torch.randn(40, 3), "prod"), ValueError, "reduce"),
    ("spmm", "edge_weight shape"): (lambda: scangraph.spmm(_graph(), torch.randn(40, 3), "sum", torch.rand(5)),
                                    ValueError, "edge_weight"),
    ("spmm", "edge_weight heads"): (
        lambda: scangraph.spmm(_graph(), torch.randn(40, 2, 3), "sum", torch.rand(200, 3)), ValueError, "edge_weight"),
    ("spmm", "edge_weight dtype"): (
        lambda: scangraph.spmm(_graph(), torch.randn(40, 3), "sum", torch.rand(200).double()), ValueError,
        "edge_weight"),
    # -- sddmm --------------------------------------------------------------------------------
    ("sddmm", "a rows"): (lambda: scangraph.sddmm(_graph(), torch.randn(39, 3), torch.randn(40, 3)), ValueError,
                          r"\ba must have"),
    ("sddmm", "b rows"): (lambda: scangraph.sddmm(_graph(), torch.randn(40, 3), torch.randn(41, 3)), ValueError,
                          r"\bb must have"),
    ("sddmm", "a rank 1"): (lambda: scangraph.sddmm(_graph(), torch.randn(40), torch.randn(40)), ValueError,
                            r"\ba must be"),
    ("sddmm", "b dtype"): (lambda: scangraph.sddmm(_graph(), torch.randn(40, 3), torch.randn(40, 3).double()),
                           ValueError, r"\ba and b"),
    ("sddmm", "trailing shape"): (lambda: scangraph.sddmm(_graph(), torch.randn(40, 2, 3), torch.randn(40, 3, 2)),
                                  ValueError, r"\ba and b"),
    ("sddmm", "b int"): (lambda: scangraph.sddmm(_graph(), torch.randn(40, 3), torch.ones(40, 3, dtype=torch.int32)),
                         TypeError, r"\bb must be"),
    # -- gat_aggregate ------------------------------------------------------------------------
    ("gat_aggregate", "x rank 4"): (
        lambda: scangraph.gat_aggregate(_graph(), torch.randn(40, 2, 3, 1), torch.randn(40, 2), torch.randn(40, 2)),
        ValueError, r"\bx must be"),
    ("gat_aggregate", "x rows"): (
        lambda: scangraph.gat_aggregate(_graph(), torch.randn(30, 2, 3), torch.randn(30, 2), torch.randn(40, 2)),
        ValueError, r"\bx must have"),
    ("gat_aggregate", "alpha_src heads"): (
        lambda: scangraph.gat_aggregate(_graph(), torch.randn(40, 2, 3), torch.randn(40, 3), torch.randn(40, 2)),
        ValueError, "alpha_src"),
    ("gat_aggregate", "alpha_dst rows"): (
        lambda: scangraph.gat_aggregate(_graph(), torch.randn(40, 2, 3), torch.randn(40, 2), torch.randn(39, 2)),
        ValueError, "alpha_dst"),
    ("gat_aggregate", "alpha_src for one head"): (
        lambda: scangraph.gat_aggregate(_graph(), torch.randn(40, 3), torch.randn(40, 1), torch.randn(40)),
        ValueError, "alpha_src"),
    ("gat_aggregate", "alpha_dst dtype"): (
        lambda: scangraph.gat_aggregate(_graph(), torch.randn(40, 2, 3), torch.randn(40, 2),
                                        torch.randn(40, 2).double()), ValueError, "alpha_dst"),
    ("gat_aggregate", "alpha_src not a tensor"): (
        lambda: scangraph.gat_aggregate(_graph(), torch.randn(40, 2, 3), 0.5, torch.randn(40, 2)),
        ValueError, "alpha_src"),
    # -- common_neighbor_aggregate ------------------------------------------------------------
    ("common_neighbor_aggregate", "src 2-D"): (
        lambda: scangraph.common_neighbor_aggregate(_graph(), torch.randn(40, 3), torch.zeros(2, 2, dtype=torch.int64),
                                                    torch.zeros(4, dtype=torch.int64)), ValueError, r"\bsrc must"),
    ("common_neighbor_aggregate", "dst int32"): (
        lambda: scangraph.common_neighbor_aggregate(_graph(), torch.randn(40, 3), torch.zeros(2, dtype=torch.int64),
                                                    torch.zeros(2, dtype=torch.int32)), ValueError, r"\bdst must"),
    ("common_neighbor_aggregate", "src too large"): (
        lambda: scangraph.common_neighbor_aggregate(_graph(), torch.randn(40, 3), torch.tensor([0, 40]),
                                                    torch.tensor([1, 2])), ValueError, r"\bsrc holds"),
    ("common_neighbor_aggregate", "dst negative"): (
        lambda: scangraph.common_neighbor_aggregate(_graph(), torch.randn(40, 3), torch.tensor([0, 4]),
                                                    torch.tensor([-1, 2])), ValueError, r"\bdst holds"),
    ("common_neighbor_aggregate", "src dst lengths"): (
        lambda: scangraph.common_neighbor_aggregate(_graph(), torch.randn(40, 3), torch.tensor([0, 4]),
                                                    torch.tensor([1])), ValueError, r"\bsrc and dst"),
    ("common_neighbor_aggregate", "x rows"): (
        lambda: scangraph.common_neighbor_aggregate(_graph(), torch.randn(41, 3), torch.tensor([0]),
                                                    torch.tensor([1])), ValueError, r"\bx must have"),
    ("common_neighbor_aggregate", "graph unsorted"): (
        lambda: scangraph.common_neighbor_aggregate(CSRGraph(torch.tensor([0, 2, 2]), torch.tensor([1, 0])),
                                                    torch.randn(2, 3), torch.tensor([0]), torch.tensor([1])),
        ValueError, r"graph's columns"),
    ("common_neighbor_aggregate", "graph not square"): (
        lambda: scangraph.common_neighbor_aggregate(make_graph("bipartite"), torch.randn(25, 3), torch.tensor([0]),
                                                    torch.tensor([1])), ValueError, r"\bgraph must be square"),
    # -- CSRGraph: the sparse ops' graph argument ----------------------------------------------
    ("CSRGraph", "col out of range"): (lambda: CSRGraph(torch.tensor([0, 2, 3]), torch.tensor([0, 3, 1]),
                                                        num_cols=3), ValueError, r"\bcol holds 3"),
    ("CSRGraph", "col negative"): (lambda: CSRGraph(torch.tensor([0, 2, 3]), torch.tensor([0, -1, 1])), ValueError,
                                   r"\bcol holds -1"),
    ("CSRGraph", "rowptr decreasing"): (lambda: CSRGraph(torch.tensor([0, 3, 2, 3]), torch.tensor([0, 1, 2])),
                                        ValueError, r"\browptr must be non-decreasing"),
    ("CSRGraph", "rowptr start"): (lambda: CSRGraph(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 1])), ValueError,
                                   r"\browptr\[0\]"),
    ("CSRGraph", "rowptr end"): (lambda: CSRGraph(torch.tensor([0, 2, 4]), torch.tensor([0, 1, 1])), ValueError,
                                 r"\browptr\[-1\]"),
    ("CSRGraph", "rowptr int32"): (lambda: CSRGraph(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0])),
                                   ValueError, r"\browptr must be"),
    ("CSRGraph", "rowptr empty"): (lambda: CSRGraph(torch.zeros(0, dtype=torch.int64), torch.zeros(0)), ValueError,
                                   r"\browptr must be"),
    ("CSRGraph", "col float"): (lambda: CSRGraph(torch.tensor([0, 1]), torch.tensor([0.0])), ValueError,
                                r"\bcol must be"),
    ("CSRGraph", "int32 col overflows"): (
        lambda: CSRGraph(torch.tensor([0, 1]), torch.tensor([0], dtype=torch.int32), num_cols=INT32_MAX + 2),
        ValueError, r"int32 col"),
    ("CSRGraph", "edge_weight shape"): (
        lambda: CSRGraph(torch.tensor([0, 1]), torch.tensor([0]), torch.rand(2)), ValueError, "edge_weight"),
    ("CSRGraph", "edge_index out of range"): (
        lambda: CSRGraph.from_edge_index(torch.tensor([[0, 5], [1, 2]]), 4), ValueError, "edge_index"),
    ("CSRGraph", "edge_index negative"): (
        lambda: CSRGraph.from_edge_index(torch.tensor([[0, -1], [1, 2]]), 4), ValueError, "edge_index"),
    ("CSRGraph", "edge_index shape"): (lambda: CSRGraph.from_edge_index(torch.tensor([[0, 1, 2]])), ValueError,
                                       "edge_index"),
    ("CSRGraph", "edge_index float"): (lambda: CSRGraph.from_edge_index(torch.tensor([[0.0], [1.0]])), ValueError,
                                       "edge_index"),
    # -- graphs built without validation reach the C++ kernels, which check them ------------------
    ("spmm", "unvalidated col"): (lambda: scangraph.spmm(_unvalidated([0, 2, 3, 3], [0, 7, 1]), torch.randn(3, 2)),
                                  RuntimeError, r"\bcol\[1\] = 7 is out of range"),
    ("spmm", "unvalidated negative col"): (
        lambda: scangraph.spmm(_unvalidated([0, 2, 3, 3], [0, -1, 1]), torch.randn(3, 2), "max"), RuntimeError,
        r"\bcol\[1\] = -1 is out of range"),
    ("spmm", "unvalidated rowptr"): (lambda: scangraph.spmm(_unvalidated([0, 3, 2, 3], [0, 1, 2]), torch.randn(3, 2)),
                                     RuntimeError, r"\browptr must be non-decreasing"),
    ("sddmm", "unvalidated col"): (
        lambda: scangraph.sddmm(_unvalidated([0, 2, 3, 3], [0, 7, 1]), torch.randn(3, 2), torch.randn(3, 2)),
        RuntimeError, r"\bcol\[1\]"),
    ("gat_aggregate", "unvalidated rowptr"): (
        lambda: scangraph.gat_aggregate(_unvalidated([0, 3, 2, 3], [0, 1, 2]), torch.randn(3, 1, 2),
                                        torch.randn(3, 1), torch.randn(3, 1)), RuntimeError, r"\browptr must"),
    ("common_neighbor_aggregate", "unvalidated col"): (
        lambda: scangraph.common_neighbor_aggregate(_unvalidated([0, 2, 3, 3], [0, 7, 1]), torch.randn(3, 2),
                                                    torch.tensor([0]), torch.tensor([1])), RuntimeError,
        r"\bcol\[1\]"),
    ("qspmm", "unvalidated col"): (lambda: scangraph.qspmm(_unvalidated([0, 2, 3, 3], [0, 7, 1]), _qt((3, 2))),
                                   RuntimeError, r"\bcol\[1\]"),
    # -- quantize / qlinear / qspmm / fake_quantize ---------------------------------------------
    ("quantize", "bits"): (lambda: scangraph.quantize(torch.randn(3, 4), bits=3), ValueError, r"\bbits must"),
    ("quantize", "bits bool"): (lambda: scangraph.quantize(torch.randn(3, 4), bits=True), ValueError, r"\bbits must"),
    ("quantize", "axis"): (lambda: scangraph.quantize(torch.randn(3, 4), 8, 2), ValueError, r"\baxis must"),
    ("quantize", "axis float"): (lambda: scangraph.quantize(torch.randn(3, 4), 8, 0.0), ValueError, r"\baxis must"),
    ("quantize", "x int"): (lambda: scangraph.quantize(torch.ones(3, 4, dtype=torch.int32)), TypeError, r"\bx must"),
    ("quantize", "x scalar"): (lambda: scangraph.quantize(torch.tensor(1.0)), ValueError, r"\bx must"),
    ("quantize", "x not a tensor"): (lambda: scangraph.quantize([1.0, 2.0]), TypeError, r"\bx must"),
    ("quantize", "x NaN"): (lambda: scangraph.quantize(torch.tensor([[1.0, float("nan")]])), RuntimeError,
                            NAN_MESSAGE),
    ("quantize", "x inf"): (lambda: scangraph.quantize(torch.tensor([[1.0, float("-inf")]]), 8, None), RuntimeError,
                            NAN_MESSAGE),
    ("qlinear", "x K"): (lambda: scangraph.qlinear(torch.randn(3, 5), _qt()), ValueError, r"\bx must be"),
    ("qlinear", "x scalar"): (lambda: scangraph.qlinear(torch.tensor(1.0), _qt()), ValueError, r"\bx must be"),
    ("qlinear", "x int"): (lambda: scangraph.qlinear(torch.ones(3, 6, dtype=torch.int64), _qt()), TypeError,
                           r"\bx must be"),
    ("qlinear", "w not a QTensor"): (lambda: scangraph.qlinear(torch.randn(3, 6), torch.randn(4, 6)), TypeError,
                                     r"\bw must be"),
    ("qlinear", "w 3-D"): (lambda: scangraph.qlinear(torch.randn(3, 6), _qt((2, 4, 6))), ValueError, r"\bw must"),
    ("qlinear", "w axis 1"): (lambda: scangraph.qlinear(torch.randn(3, 6), _qt(axis=1)), ValueError, r"\bw must be"),
    ("qlinear", "bias shape"): (lambda: scangraph.qlinear(torch.randn(3, 6), _qt(), torch.randn(5)), ValueError,
                                r"\bbias must"),
    ("qlinear", "bias int"): (lambda: scangraph.qlinear(torch.randn(3, 6), _qt(), torch.ones(4, dtype=torch.int32)),
                              ValueError, r"\bbias must"),
    ("qlinear", "bias not a tensor"): (lambda: scangraph.qlinear(torch.randn(3, 6), _qt(), [0.0] * 4), TypeError,
                                       r"\bbias must"),
    ("qlinear", "activation"): (lambda: scangraph.qlinear(torch.randn(3, 6), _qt(), activation="tanh"), ValueError,
                                r"\bactivation must"),
    ("qlinear", "act_bits"): (lambda: scangraph.qlinear(torch.randn(3, 6), _qt(), act_bits=4), ValueError,
                              r"\bact_bits must"),
    ("qlinear", "out_dtype"): (lambda: scangraph.qlinear(torch.randn(3, 6), _qt(), out_dtype=torch.float64),
                               ValueError, r"\bout_dtype must"),
    ("qlinear", "int32 with bias"): (
        lambda: scangraph.qlinear(torch.randn(3, 6), _qt(), torch.randn(4), out_dtype=torch.int32),
        ValueError, r"\bbias\b"),
    ("qlinear", "x NaN"): (lambda: scangraph.qlinear(torch.tensor([[float("nan")] * 6]), _qt()), RuntimeError,
                           NAN_MESSAGE),
    ("qspmm", "graph not a CSRGraph"): (lambda: scangraph.qspmm(torch.eye(40), _qt((40, 3))), TypeError,
                                        r"\bgraph must"),
    ("qspmm", "xq not a QTensor"): (lambda: scangraph.qspmm(_graph(), torch.randn(40, 3)), TypeError,
                                    r"\bxq must"),
    ("qspmm", "xq 4 bits"): (lambda: scangraph.qspmm(_graph(), _qt((40, 3), 4)), ValueError, r"\bxq must"),
    ("qspmm", "xq rows"): (lambda: scangraph.qspmm(_graph(), _qt((39, 3))), ValueError, r"\bxq must"),
    ("qspmm", "xq axis 1"): (lambda: scangraph.qspmm(_graph(), _qt((40, 3), axis=1)), ValueError, r"\bxq must"),
    ("qspmm", "reduce"): (lambda: scangraph.qspmm(_graph(), _qt((40, 3)), "prod"), ValueError, r"\breduce must"),
    ("qspmm", "edge_weight shape"): (lambda: scangraph.qspmm(_graph(), _qt((40, 3)), "sum", torch.rand(199)),
                                     ValueError, r"\bedge_weight must"),
    ("qspmm", "edge_weight int"): (
        lambda: scangraph.qspmm(_graph(), _qt((40, 3)), "sum", torch.ones(200, dtype=torch.int64)),
        TypeError, r"\bedge_weight must"),
    ("fake_quantize", "bits"): (lambda: scangraph.fake_quantize(torch.randn(3, 4), 2), ValueError, r"\bbits must"),
    ("fake_quantize", "axis"): (lambda: scangraph.fake_quantize(torch.randn(3, 4), 8, -3), ValueError, r"\baxis must"),
    ("fake_quantize", "x int"): (lambda: scangraph.fake_quantize(torch.ones(3, 4, dtype=torch.int32)), TypeError,
                                 r"\bx must"),
    ("fake_quantize", "scale not a tensor"): (lambda: scangraph.fake_quantize(torch.randn(3, 4), 8, 0, 0.1),
                                              TypeError, r"\bscale must"),
    ("fake_quantize", "scale int"): (
        lambda: scangraph.fake_quantize(torch.randn(3, 4), 8, 0, torch.ones(3, dtype=torch.int64)), TypeError,
        r"\bscale must"),
    ("fake_quantize", "scale for axis None"): (
        lambda: scangraph.fake_quantize(torch.randn(3, 4), 8, None, torch.rand(3)), ValueError, r"\bscale must"),
    ("fake_quantize", "scale shape"): (
        lambda: scangraph.fake_quantize(torch.randn(3, 4), 8, 0, torch.rand(4)), (ValueError, RuntimeError),
        r"\bscale must"),
}


def _check_raises(call, error, pattern):
    with pytest.raises(error) as info:
        call()
    assert re.search(pattern, str(info.value)), f"message does not name the argument ({pattern!r}): {info.value}"


@pytest.mark.parametrize("case", list(CASES), ids=lambda case: f"{case[0]}-{case[1]}")
def test_bad_input_cpp(case):
    """The C++ backend (auto on CPU tensors): every case raises and names its argument."""
    call, error, pattern = CASES[case]
    with scangraph.use_backend("cpp"):
        _check_raises(call, error, pattern)



# ---- the raw C++ ops say the same as the public functions ------------------------------------
# Where the Python layer and the C++ glue both check an argument (Python before the Triton ops,
# C++ for callers of torch.ops.scangraph.*), the rule lives in ops/_rules.py and its twin in
# csrc/glue/common_args.h: the same exception type with the same message. So far the scans'
# cu_seqlens and every check of selective_scan's forward are shared this way.
def _raw_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False, *, initial_state=None, cu_seqlens=None, reverse=False):
    return torch.ops.scangraph.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                              cu_seqlens, reverse)


def _raw_prefix_attention(q, k, v, *, scale=None, initial_state=None, return_state=False, cu_seqlens=None):
    assert scale is None and initial_state is None
    return torch.ops.scangraph.prefix_attention(q, k, v, k.shape[-1] ** -0.5, None, None, None, cu_seqlens)


def _raw_prefix_attention_step(state, q, k_t, v_t, *, scale=None):
    assert scale is None
    return torch.ops.scangraph.prefix_attention_step(*state, q, k_t, v_t, k_t.shape[-1] ** -0.5)


def _raw_spmm(graph, x, reduce="sum", edge_weight=None):
    op = torch.ops.scangraph.spmm_arg if reduce in ("max", "min") else torch.ops.scangraph.spmm
    return op(graph.rowptr, graph.col, edge_weight, x, reduce, None, None, None)


def _raw_causal_conv1d(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                       activation=None):
    assert not return_final_states and activation is None
    return torch.ops.scangraph.causal_conv1d(x, weight, bias, seq_idx, initial_states, False)


def _raw_causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                              conv_state_indices=None):
    assert activation is None
    return torch.ops.scangraph.causal_conv1d_update(x if x.dim() != 2 else x[..., None], conv_state, weight, bias,
                                                    False, cache_seqlens, conv_state_indices)


def _raw_sddmm(graph, a, b):
    return torch.ops.scangraph.sddmm(graph.rowptr, graph.col, a, b, None, None, None)


def _raw_quantize(x, bits=8, axis=0):
    return torch.ops.scangraph.quantize(x, bits, axis)


def _raw_qlinear(x, w, bias=None, activation=None, act_bits=8, out_dtype=None):
    assert act_bits == 8 and w.axis == 0
    return torch.ops.scangraph.qlinear(x, w.data, w.scale, w.bits, w.shape[1], bias,
                                       "none" if activation is None else activation, out_dtype)


def _raw_qspmm(graph, xq, reduce="sum", edge_weight=None):
    return torch.ops.scangraph.qspmm(graph.rowptr, graph.col, edge_weight, xq.data, xq.scale, reduce)


# Every case that the raw ops can see as the public functions do. Not: the prefix-attention
# initial_state cases (the raw ops take m0, c0, w0 apart, already in the accumulation dtype), the
# step's state cases (the public function checks the tuple before the raw op sees its parts),
# the graph cases (the raw sparse ops take rowptr / col), the row counts of the source side (the raw ops take the graph's column count
# from the features themselves), and what a QTensor carries apart from its data and scales (its
# bits, axis and logical shape), or the public function alone takes (act_bits).
RAW_CASES = [case for case in CASES if case[0] == "selective_scan" or (
    case[0] in ("causal_conv1d_fn", "causal_conv1d_update") and "activation" not in case[1]
    and "final states" not in case[1]) or (
    case[0] in ("prefix_attention", "prefix_attention_step") and "state" not in case[1]) or case in (
    ("spmm", "x rank 1"), ("spmm", "x rank 4"), ("spmm", "x int"), ("spmm", "x bool"), ("spmm", "edge_weight shape"),
    ("spmm", "edge_weight heads"), ("spmm", "edge_weight dtype"), ("sddmm", "a rows"), ("sddmm", "a rank 1"),
    ("sddmm", "b dtype"), ("sddmm", "trailing shape"), ("sddmm", "b int"), ("spmm", "reduce"))] + [
    case for case in CASES if case[0] in ("quantize", "qlinear", "qspmm") and case[1] in (
        "bits", "axis", "x int", "x scalar", "x NaN", "x inf", "x K", "bias shape", "bias int", "activation",
        "out_dtype", "int32 with bias", "reduce", "edge_weight shape", "edge_weight int", "unvalidated col")]


@pytest.mark.parametrize("case", RAW_CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def test_raw_op_message_equals_the_public_one(case, monkeypatch):
    """The case through the public function, then with the public function swapped for its raw
    op: the same exception type and message (an argument the schema refuses, a list for a
    tensor, never reaches the glue)."""
    if not scangraph.cpp_built():
        pytest.skip("the C++ ops are not built")
    call, error, _ = CASES[case]
    with pytest.raises(error) as public:
        call()
    monkeypatch.setattr(sys.modules[__name__], "ss", _raw_selective_scan)
    monkeypatch.setattr(sys.modules[__name__], "cc", _raw_causal_conv1d)
    monkeypatch.setattr(sys.modules[__name__], "ccu", _raw_causal_conv1d_update)
    monkeypatch.setattr(sys.modules[__name__], "pa", _raw_prefix_attention)
    monkeypatch.setattr(sys.modules[__name__], "pas", _raw_prefix_attention_step)
    monkeypatch.setattr(scangraph, "spmm", _raw_spmm)
    monkeypatch.setattr(scangraph, "sddmm", _raw_sddmm)
    monkeypatch.setattr(scangraph, "quantize", _raw_quantize)
    monkeypatch.setattr(scangraph, "qlinear", _raw_qlinear)
    monkeypatch.setattr(scangraph, "qspmm", _raw_qspmm)
    try:
        call()
    except (TypeError, ValueError, RuntimeError) as raw:
        if "but instead found type" in str(raw):
            pytest.skip(f"the schema refuses the argument before the glue: {raw}")
        # On the stable ABI no C++ exception reaches Python as TypeError: a dtype check of the raw op
        # raises RuntimeError there, with the same message (csrc/glue/torch_api.h).
        expected = RuntimeError if error is TypeError and scangraph._extension.stable_abi() else type(public.value)
        assert (type(raw), str(raw)) == (expected, str(public.value))
    else:
        pytest.fail(f"the raw op accepted what the public function refuses ({public.value})")

# A few representative cases on the Triton backend under the interpreter: the Python checks run
# before any backend is chosen, so one case per family shows the Triton path is guarded as well.
TRITON_CASES = [("selective_scan", "cu_seqlens short of L"), ("prefix_attention", "cu_seqlens negative"),
                ("spmm", "edge_weight dtype"), ("common_neighbor_aggregate", "src too large"), ("qlinear", "x K")]


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def test_bad_input_triton(case):
    if not _available("triton", "cpu"):
        pytest.skip("the Triton backend is unavailable on CPU")
    call, error, pattern = CASES[case]
    with scangraph.use_backend("triton"):
        _check_raises(call, error, pattern)


# ---- mismatched devices: only where a second device exists ----------------------------------
def _cuda(t):
    return t.to("cuda")


DEVICE_CASES = {
    "selective_scan delta": (lambda: ss(**_scan(delta=_cuda(torch.rand(1, 4, 8)))), "delta"),
    "selective_scan cu_seqlens": (lambda: ss(**_scan(cu_seqlens=_cuda(_cu(0, 8)))), "cu_seqlens"),
    "selective_state_update state": (lambda: ssu(**_step(state=_cuda(torch.randn(2, 4, 3)))), "state"),
    "prefix_attention v": (lambda: pa(*_qkv()[:2], _cuda(_qkv()[2])), r"\bv is on"),
    "prefix_attention_step state": (
        lambda: pas(tuple(_cuda(t) for t in _state()), _qkv()[0], _qkv()[1][:, 0], _qkv()[2][:, 0]), r"\bstate"),
    "spmm x": (lambda: scangraph.spmm(_graph(), _cuda(torch.randn(40, 3))), r"\bx is on"),
    "spmm edge_weight": (lambda: scangraph.spmm(_graph(), torch.randn(40, 3), "sum", _cuda(torch.rand(200))),
                         "edge_weight"),
    "sddmm b": (lambda: scangraph.sddmm(_graph(), torch.randn(40, 3), _cuda(torch.randn(40, 3))), r"\bb is on"),
    "gat_aggregate alpha_dst": (
        lambda: scangraph.gat_aggregate(_graph(), torch.randn(40, 2, 3), torch.randn(40, 2),
                                        _cuda(torch.randn(40, 2))), "alpha_dst"),
    "common_neighbor_aggregate src": (
        lambda: scangraph.common_neighbor_aggregate(_graph(), torch.randn(40, 3), _cuda(torch.tensor([0])),
                                                    torch.tensor([1])), r"\bsrc is on"),
    "qlinear w": (lambda: scangraph.qlinear(torch.randn(3, 6), _qt().to("cuda")), r"\bw is on|\bx is on"),
    "qlinear bias": (lambda: scangraph.qlinear(torch.randn(3, 6), _qt(), _cuda(torch.randn(4))), r"\bbias is on"),
    "qspmm xq": (lambda: scangraph.qspmm(_graph(), _qt((40, 3)).to("cuda")), r"\bxq is on"),
    "qspmm edge_weight": (lambda: scangraph.qspmm(_graph(), _qt((40, 3)), "sum", _cuda(torch.rand(200))),
                          r"\bedge_weight is on"),
    "fake_quantize scale": (lambda: scangraph.fake_quantize(torch.randn(3, 4), 8, 0, _cuda(torch.rand(3))),
                            r"\bscale is on"),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(DEVICE_CASES))
def test_mismatched_devices(case):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU: a second device")
    call, pattern = DEVICE_CASES[case]
    _check_raises(call, (ValueError, RuntimeError), pattern)


# ---- legal but unusual input: strided, expanded (stride 0), empty, NaN / inf ------------------
def _run(fn, leaves, seed=1):
    """Outputs of fn(*leaves) and the gradients of every float leaf for a fixed random grad_out."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in leaves]
    outs = fn(*leaves)
    outs = _flatten(outs)
    generator = torch.Generator().manual_seed(seed)
    differentiable = [t for t in leaves if t.requires_grad]
    grad_outs = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in outs]
    # An output that does not depend on the leaves (e.g. the reference on empty input) counts as a
    # zero gradient, so an op that drops a gradient the reference has still fails the comparison.
    pairs = [(o, g) for o, g in zip(outs, grad_outs) if o.is_floating_point() and o.requires_grad]
    grads = [None] * len(differentiable)
    if pairs and differentiable:
        grads = torch.autograd.grad([o for o, _ in pairs], differentiable, [g for _, g in pairs], allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, differentiable)]
    return [o.detach() for o in outs] + grads


def _flatten(outs):
    if isinstance(outs, (tuple, list)):
        return [t for o in outs for t in _flatten(o)]
    return [outs]


def _no_grad(fn):
    """Inference ops (qspmm, qlinear) have no backward: compare their forward only."""
    def run(*args):
        with torch.no_grad():
            return fn(*args)
    return run


def _d(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _sp(reduce):
    return lambda x, *w: scangraph.spmm(_G, x, reduce, *w)


_G = make_graph("hub")  # 70 nodes, a row of 300 edges, duplicates
_E = _G.num_edges
_R = (_G.rowptr, _G.col)


def _scan_ref(u, delta, A, B, C, D=None, z=None, bias=None, h0=None, cu=None):
    return reference.selective_scan(u, delta, A, B, C, D, z, bias, True, h0, cu)


def _scan_cpp(u, delta, A, B, C, D=None, z=None, bias=None, h0=None, cu=None):
    return ss(u, delta, A, B, C, D, z, bias, True, True, initial_state=h0, cu_seqlens=cu, backend="cpp")


# name: (ours, reference, leaves): both functions take the same leaves and make the same views.
LEGAL = {
    # strided and expanded: transposes, slices and stride-0 broadcasts made inside the call
    "spmm x transposed sum": (lambda x: scangraph.spmm(_G, x.t()), lambda x: reference.spmm(*_R, x.t()),
                              lambda: [_d(6, 70)]),
    "spmm x transposed mean": (lambda x: scangraph.spmm(_G, x.t(), "mean"),
                               lambda x: reference.spmm(*_R, x.t(), "mean"), lambda: [_d(6, 70)]),
    "spmm x sliced max": (lambda x: scangraph.spmm(_G, x[:, ::2], "max"),
                          lambda x: reference.spmm(*_R, x[:, ::2], "max"), lambda: [_d(70, 12)]),
    # every source equal: the max ties everywhere and the first edge of each row must win
    "spmm x expanded max": (lambda x: scangraph.spmm(_G, x.expand(70, 5), "max"),
                            lambda x: reference.spmm(*_R, x.expand(70, 5), "max"), lambda: [_d(1, 5)]),
    "spmm x expanded heads": (lambda x: scangraph.spmm(_G, x.expand(70, 3, 4), "min"),
                              lambda x: reference.spmm(*_R, x.expand(70, 3, 4), "min"), lambda: [_d(70, 1, 4)]),
    "spmm edge_weight expanded": (lambda x, w: scangraph.spmm(_G, x, "sum", w.expand(_E)),
                                  lambda x, w: reference.spmm(*_R, x, "sum", w.expand(_E)),
                                  lambda: [_d(70, 3), _d(1)]),
    "spmm edge_weight sliced": (lambda x, w: scangraph.spmm(_G, x, "mean", w[:, 1]),
                                lambda x, w: reference.spmm(*_R, x, "mean", w[:, 1]), lambda: [_d(70, 3), _d(_E, 2)]),
    "sddmm a transposed b expanded": (
        lambda a, b: scangraph.sddmm(_G, a.t(), b.expand(70, 4)), lambda a, b: reference.sddmm(*_R, a.t(),
                                                                                               b.expand(70, 4)),
        lambda: [_d(4, 70), _d(1, 4)]),
    "gat strided": (
        lambda x, s, d: scangraph.gat_aggregate(_G, x[..., ::2], s.expand(70, 2), d.t()),
        lambda x, s, d: reference.gat_aggregate(*_R, x[..., ::2], s.expand(70, 2), d.t()),
        lambda: [_d(70, 2, 6), _d(1, 2), _d(2, 70)]),
    "common neighbours strided": (
        lambda x: scangraph.common_neighbor_aggregate(_G, x.t(), torch.tensor([3]).expand(5), torch.arange(10)[::2]),
        lambda x: reference.common_neighbor_aggregate(*_R, x.t(), torch.tensor([3]).expand(5),
                                                      torch.arange(10)[::2]),
        lambda: [_d(4, 70)]),
    "selective_scan strided": (
        lambda u, dl, A, B, C, D, z, h0: _scan_cpp(u.transpose(1, 2), dl, A.expand(4, 3), B.expand(2, 1, 3, 9),
                                                   C[..., ::2], D.expand(4), z.transpose(1, 2), None,
                                                   h0.transpose(1, 2)),
        lambda u, dl, A, B, C, D, z, h0: _scan_ref(u.transpose(1, 2), dl, A.expand(4, 3), B.expand(2, 1, 3, 9),
                                                   C[..., ::2], D.expand(4), z.transpose(1, 2), None,
                                                   h0.transpose(1, 2)),
        lambda: [_d(2, 9, 4), _d(2, 4, 9).abs() * 0.3, -_d(1, 3).abs(), _d(2, 1, 3, 1), _d(2, 1, 3, 18), _d(1),
                 _d(2, 9, 4), _d(2, 3, 4)]),
    "prefix_attention strided": (
        lambda q, k, v: pa(q.expand(2, HEADS, DIM), k.transpose(1, 2), v.expand(2, 7, HEADS, DIM_V)),
        lambda q, k, v: reference.prefix_attention(q.expand(2, HEADS, DIM), k.transpose(1, 2),
                                                   v.expand(2, 7, HEADS, DIM_V))[0],
        lambda: [_d(HEADS, DIM), _d(2, HEADS, 7, DIM), _d(2, 1, HEADS, DIM_V)]),
    "prefix_attention state strided": (
        lambda q, k, v, m, c, w: pa(q, k, v, initial_state=(m.t(), c[:, ::2], w.transpose(0, 1))),
        lambda q, k, v, m, c, w: reference.prefix_attention(q, k, v, None, (m.t(), c[:, ::2], w.transpose(0, 1)))[0],
        lambda: [_d(HEADS, DIM), _d(2, 6, HEADS, DIM), _d(2, 6, HEADS, DIM_V), _d(HEADS, 2),
                 _d(2, 2 * HEADS).abs() + 0.5, _d(HEADS, 2, DIM_V)]),
    "fake_quantize transposed": (lambda x, s: scangraph.fake_quantize(x.t(), 8, 1, s.expand(5)),
                                 lambda x, s: reference.fake_quantize(x.t(), 8, 1, s.expand(5)),
                                 lambda: [_d(5, 7), _d(1).abs() * 0.01]),
    # empty: zero nodes, features, pairs, positions, sequences or rows
    "spmm empty graph": (lambda x: scangraph.spmm(make_graph("empty"), x, "max"),
                         lambda x: reference.spmm(*(lambda g: (g.rowptr, g.col))(make_graph("empty")), x, "max"),
                         lambda: [_d(0, 4)]),
    "spmm zero features": (_sp("sum"), lambda x: reference.spmm(*_R, x), lambda: [_d(70, 0)]),
    "spmm no edges": (lambda x: scangraph.spmm(make_graph("no_edges"), x, "min"),
                      lambda x: torch.zeros(7, 3, dtype=x.dtype) + 0 * x.sum(), lambda: [_d(7, 3)]),
    "sddmm zero features": (lambda a, b: scangraph.sddmm(_G, a, b), lambda a, b: reference.sddmm(*_R, a, b),
                            lambda: [_d(70, 0), _d(70, 0)]),
    "gat zero features": (lambda x, s, d: scangraph.gat_aggregate(_G, x, s, d),
                          lambda x, s, d: reference.gat_aggregate(*_R, x, s, d),
                          lambda: [_d(70, 2, 0), _d(70, 2), _d(70, 2)]),
    "common neighbours no pairs": (
        lambda x: scangraph.common_neighbor_aggregate(_G, x, torch.zeros(0, dtype=torch.int64),
                                                      torch.zeros(0, dtype=torch.int64)),
        lambda x: reference.common_neighbor_aggregate(*_R, x, torch.zeros(0, dtype=torch.int64),
                                                      torch.zeros(0, dtype=torch.int64)), lambda: [_d(70, 3)]),
    "selective_scan L = 0": (_scan_cpp, _scan_ref, lambda: [_d(2, 4, 0), _d(2, 4, 0), -_d(4, 3).abs(), _d(4, 3),
                                                           _d(4, 3), _d(4)]),
    "selective_scan batch 0": (_scan_cpp, _scan_ref, lambda: [_d(0, 4, 5), _d(0, 4, 5), -_d(4, 3).abs(),
                                                             _d(0, 3, 5), _d(0, 3, 5)]),
    "selective_scan empty sequences": (
        lambda *t: _scan_cpp(*t, cu=_cu(0, 0, 3, 3, 9, 9)), lambda *t: _scan_ref(*t, cu=_cu(0, 0, 3, 3, 9, 9)),
        lambda: [_d(1, 4, 9), _d(1, 4, 9).abs() * 0.3, -_d(4, 3).abs(), _d(1, 3, 9), _d(1, 3, 9)]),
    "prefix_attention L = 0": (lambda q, k, v: pa(q, k, v), lambda q, k, v: reference.prefix_attention(q, k, v)[0],
                               lambda: [_d(HEADS, DIM), _d(2, 0, HEADS, DIM), _d(2, 0, HEADS, DIM_V)]),
    "prefix_attention batch 0": (lambda q, k, v: pa(q, k, v), lambda q, k, v: reference.prefix_attention(q, k, v)[0],
                                 lambda: [_d(HEADS, DIM), _d(0, 4, HEADS, DIM), _d(0, 4, HEADS, DIM_V)]),
    "prefix_attention empty sequences": (
        lambda q, k, v: pa(q, k, v, cu_seqlens=_cu(0, 0, 4, 4, 6), return_state=True),
        lambda q, k, v: reference.prefix_attention(q, k, v, None, None, _cu(0, 0, 4, 4, 6)),
        lambda: [_d(HEADS, DIM), _d(1, 6, HEADS, DIM), _d(1, 6, HEADS, DIM_V)]),
    "fake_quantize empty": (lambda x: scangraph.fake_quantize(x, 8, 0), lambda x: reference.fake_quantize(x, 8, 0),
                            lambda: [_d(0, 4)]),
    # NaN / inf: propagated like the reference does (sum / mean, sddmm, GAT, scan), no crash
    "spmm NaN and inf sum": (
        lambda x: scangraph.spmm(_G, x * torch.tensor([1.0] * 5 + [float("nan"), float("inf")] + [1.0] * 63,
                                                      dtype=torch.float64)[:, None]),
        lambda x: reference.spmm(*_R, x * torch.tensor([1.0] * 5 + [float("nan"), float("inf")] + [1.0] * 63,
                                                       dtype=torch.float64)[:, None]),
        lambda: [_d(70, 3)]),
    "spmm NaN weight mean": (
        lambda x, w: scangraph.spmm(_G, x, "mean", w.index_fill(0, torch.tensor([7]), float("nan"))),
        lambda x, w: reference.spmm(*_R, x, "mean", w.index_fill(0, torch.tensor([7]), float("nan"))),
        lambda: [_d(70, 3), _d(_E)]),
    "sddmm NaN": (lambda a, b: scangraph.sddmm(_G, a.index_fill(0, torch.tensor([3]), float("nan")), b),
                  lambda a, b: reference.sddmm(*_R, a.index_fill(0, torch.tensor([3]), float("nan")), b),
                  lambda: [_d(70, 4), _d(70, 4)]),
    "gat NaN feature": (
        lambda x, s, d: scangraph.gat_aggregate(_G, x.index_fill(0, torch.tensor([11]), float("nan")), s, d),
        lambda x, s, d: reference.gat_aggregate(*_R, x.index_fill(0, torch.tensor([11]), float("nan")), s, d),
        lambda: [_d(70, 2, 3), _d(70, 2), _d(70, 2)]),
    "selective_scan NaN": (
        lambda u, *t: _scan_cpp(u.index_fill(2, torch.tensor([4]), float("nan")), *t),
        lambda u, *t: _scan_ref(u.index_fill(2, torch.tensor([4]), float("nan")), *t),
        lambda: [_d(1, 4, 9), _d(1, 4, 9).abs() * 0.3, -_d(4, 3).abs(), _d(4, 3), _d(4, 3)]),
    "qspmm NaN weight": (
        _no_grad(lambda x, w: scangraph.qspmm(_G, scangraph.quantize(x), "sum",
                                     w.float().index_fill(0, torch.tensor([2]), float("nan")))),
        _no_grad(lambda x, w: reference.qspmm(*_R, scangraph.quantize(x).data, scangraph.quantize(x).scale, "sum",
                                     w.float().index_fill(0, torch.tensor([2]), float("nan")), torch.float32)),
        lambda: [_d(70, 3).float(), _d(_E)]),
}


@pytest.mark.parametrize("case", list(LEGAL))
def test_legal_unusual_input_matches_reference(case):
    ours, ref, leaves = LEGAL[case]
    inputs = leaves()
    got, want = _run(ours, inputs), _run(ref, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if g.is_floating_point():
            # float64 inputs (fp32 for qspmm): the C++ kernels sum in another order than the reference
            tol = 1e-9 if g.dtype == torch.float64 else 1e-5
            torch.testing.assert_close(g.double(), w.double(), atol=tol, rtol=tol, equal_nan=True)
        else:
            assert torch.equal(g, w)


def test_fake_quantize_zero_scale_gives_zero():
    """A given zero scale (a channel calibrated on zeros) quantizes to 0, as quantize() does for a
    zero channel; it used to divide 0 / 0 and return NaN (fixed in reference.fake_quantize)."""
    x = torch.cat([torch.zeros(1, 4), torch.randn(2, 4)])
    scale = torch.tensor([0.0, 0.02, 0.0])
    out = scangraph.fake_quantize(x, 8, 0, scale)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(4)) and torch.equal(out[2], torch.zeros(4))
    want = (x[1] / 0.02).round().clamp(-127, 127) * 0.02
    torch.testing.assert_close(out[1], want)


def test_prefix_attention_nan_propagates_from_its_position():
    """docs/prefix_attention.md: a NaN in v propagates to its sequence and head from its position on;
    earlier positions and other heads stay finite and equal to the reference."""
    q, k, v = (t.double() for t in _qkv(2, 9))
    v_nan = v.clone()
    v_nan[1, 4, 0, 1] = float("nan")
    o = pa(q, k, v_nan, backend="cpp")
    want = reference.prefix_attention(q, k, v)[0]
    assert torch.isnan(o[1, 4:, 0]).any(dim=-1).all()
    torch.testing.assert_close(o[1, :4], want[1, :4], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(o[1, :, 1], want[1, :, 1], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(o[0], want[0], atol=1e-10, rtol=1e-10)


# ---- the raw ops guard themselves: a direct call gets the glue's checks, never a crash ---------
def test_state_update_zero_groups_raises_not_sigfpe():
    """The glue checked dim % groups before groups >= 1: B of shape (batch, 0, N) died of SIGFPE."""
    args = _step()
    bc = torch.randn(2, 0, 3)
    with pytest.raises(RuntimeError, match="divisible by the groups of B"):
        torch.ops.scangraph.selective_state_update(args["state"], args["x"], args["dt"], args["A"], bc, bc,
                                                   None, None, None, False)


def test_state_update_checks_d_z_dt_bias():
    """The Python wrapper checks D, z and dt_bias like the glue does."""
    for name, bad, pattern in (("D", torch.randn(5), r"\bD must have shape"),
                               ("dt_bias", torch.randn(4, 1), r"\bdt_bias must have shape"),
                               ("z", torch.randn(2, 4, dtype=torch.float64), r"\bz must be float32, got float64")):
        with pytest.raises((ValueError, TypeError), match=pattern):
            ssu(**_step(**{name: bad}))


def test_spmm_arg_backward_rejects_weight_heads_mismatch():
    """A 2-D weight whose second dimension is not heads would be read out of bounds."""
    g = _graph()
    x = torch.randn(g.num_cols, 2, 3)
    out, arg = torch.ops.scangraph.spmm_arg(g.rowptr, g.col, None, x, "max")
    rowptr_t, col_t, perm_t = g.transpose_parts()
    with pytest.raises(RuntimeError, match="edge_weight must be"):
        torch.ops.scangraph.spmm_arg_backward(g.rowptr, g.col, rowptr_t, col_t, perm_t,
                                              torch.rand(g.num_edges, 3), x, torch.randn_like(out), arg, True)


def _common_neighbor_backends():
    import cuda_emulation
    backends = ["triton"] if _available("triton", "cpu") else []
    if cuda_emulation.load() is None:
        backends.append("cuda_emulated")
    return backends


@pytest.mark.parametrize("backend", ("triton", "cuda_emulated"))
def test_common_neighbors_kernels_read_nothing_for_ids_out_of_range(backend):
    """What a traced call hands the CUDA and Triton kernels unchecked: a pair naming a node past
    the graph reads no memory and counts no common neighbour."""
    if backend not in _common_neighbor_backends():
        pytest.skip(f"backend {backend} is unavailable")
    g = _graph()
    op = scangraph.backend.op_for("common_neighbors", backend)
    src = torch.tensor([0, g.num_rows + 1000, -7, 3])
    dst = torch.tensor([1, 2, 5, 10 ** 12])
    ptr, neighbors = op(g.rowptr, g.col, src, dst)
    counts = ptr.diff()
    assert counts[1:].tolist() == [0, 0, 0]
    want = reference.common_neighbor_aggregate(g.rowptr, g.col, torch.ones(g.num_rows, 1, dtype=torch.float64),
                                               src[:1], dst[:1])
    assert counts[0].item() == int(want.item())


def test_common_neighbor_aggregate_compiled_checks_ids():
    """Traced, the ids are checked by an async assert in the graph (no host read, which would break
    the full graph). aot_eager: Inductor's C++ compile of the graph cost 27 s of CI's test time."""
    g = make_graph("karate")
    fn = torch.compile(lambda x, s, d: scangraph.common_neighbor_aggregate(g, x, s, d), fullgraph=True,
                       backend="aot_eager")
    x = torch.randn(g.num_rows, 3)
    ok = fn(x, torch.tensor([0, 1]), torch.tensor([2, 3]))
    torch.testing.assert_close(ok, scangraph.common_neighbor_aggregate(g, x, torch.tensor([0, 1]),
                                                                       torch.tensor([2, 3])))
    with pytest.raises(RuntimeError, match="outside"):
        fn(x, torch.tensor([0, g.num_rows]), torch.tensor([2, 3]))


def _raw_device_cases():
    """Raw-op calls with one tensor left on the CPU while the others are on the GPU."""
    g = _graph().to("cuda")
    x = torch.randn(g.num_cols, 2, 3, device="cuda")
    rowptr_t, col_t, perm_t = g.transpose_parts()
    out, arg = torch.ops.scangraph.spmm_arg(g.rowptr, g.col, None, x, "max")
    a_src, a_dst = torch.randn(g.num_cols, 2, device="cuda"), torch.randn(g.num_rows, 2, device="cuda")
    gat_out, row_max, row_sum = torch.ops.scangraph.gat_aggregate(g.rowptr, g.col, x, a_src, a_dst, 0.2)
    delta = (gat_out * gat_out).sum(-1).float()
    s = {k: v.cuda() for k, v in _step().items()}
    u = {k: v.cuda() for k, v in _scan().items()}
    scan_out, last, checkpoints = torch.ops.scangraph.selective_scan(
        u["u"], u["delta"], u["A"], u["B"], u["C"], None, None, None, False, None, None, False)
    return {
        "selective_state_update z": (lambda: torch.ops.scangraph.selective_state_update(
            s["state"], s["x"], s["dt"], s["A"], s["B"], s["C"], None, s["x"].cpu(), None, False), r"\bz is on"),
        "spmm_arg_backward grad": (lambda: torch.ops.scangraph.spmm_arg_backward(
            g.rowptr, g.col, rowptr_t, col_t, perm_t, None, x, out.cpu(), arg, False), "grad"),
        "spmm_arg_backward arg": (lambda: torch.ops.scangraph.spmm_arg_backward(
            g.rowptr, g.col, rowptr_t, col_t, perm_t, None, x, out, arg.cpu(), False), "arg"),
        "gat_aggregate_backward row_max": (lambda: torch.ops.scangraph.gat_aggregate_backward(
            g.rowptr, g.col, rowptr_t, col_t, x, a_src, a_dst, row_max.cpu(), row_sum, delta, gat_out, 0.2),
            "row statistics"),
        "gat_aggregate_backward grad": (lambda: torch.ops.scangraph.gat_aggregate_backward(
            g.rowptr, g.col, rowptr_t, col_t, x, a_src, a_dst, row_max, row_sum, delta, gat_out.cpu(), 0.2), "grad"),
        "selective_scan_backward grad_out": (lambda: torch.ops.scangraph.selective_scan_backward(
            scan_out.cpu(), None, u["u"], u["delta"], u["A"], u["B"], u["C"], None, None, None, False, None, None,
            False, checkpoints), "grad_out"),
        "selective_scan_backward checkpoints": (lambda: torch.ops.scangraph.selective_scan_backward(
            scan_out, None, u["u"], u["delta"], u["A"], u["B"], u["C"], None, None, None, False, None, None,
            False, checkpoints.cpu()), "checkpoints"),
    }


RAW_DEVICE_CASES = ("selective_state_update z", "spmm_arg_backward grad", "spmm_arg_backward arg",
                    "gat_aggregate_backward row_max", "gat_aggregate_backward grad",
                    "selective_scan_backward grad_out", "selective_scan_backward checkpoints")


@pytest.mark.cuda
@pytest.mark.parametrize("case", RAW_DEVICE_CASES)
def test_raw_ops_check_devices(case):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU: a second device")
    call, pattern = _raw_device_cases()[case]
    _check_raises(call, RuntimeError, pattern)
