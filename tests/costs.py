"""Cost curves for the policy's tests: seconds per llama_decode by tokens, as measured."""

from edge_tree.core.costs import CostModel

# A 2-core CPU (docs/design.md, "Measured costs"): F32 target verify, Q4_K_M draft. A pass of many
# tokens costs several passes of one.
CPU = CostModel({1: .0416, 2: .0516, 4: .0582, 8: .0778, 16: .1036, 64: .293},
                {1: .0198, 2: .0331, 4: .0432, 8: .0649, 16: .1033}, host_per_node=0.0004)
