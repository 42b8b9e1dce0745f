"""Names for what each quantizer sees. Methods choose a quantizer per role; records group by role.

    patch_in      image input of the patch-embedding conv
    post_ln       LayerNorm output feeding a Linear (qkv, fc1, Swin PatchMerging.reduction)
    q, k          the two operands of q @ k^T
    post_softmax  attention probabilities (first operand of attn @ v)
    v             second operand of attn @ v
    attn_out      attention output feeding proj
    post_gelu     GELU output feeding fc2
    head_in       pooled / class-token features feeding the classifier
    other_in      input of any other Linear the adapter finds
    weight        weights of a Linear or Conv2d

Fully quantized mode only (`quant.full=true`; FP in the common protocol):

    ln_in         LayerNorm input: the residual stream (the skip path reads the same quantized tensor)
    softmax_in    attention logits entering the softmax
    gelu_in       GELU input (fc1 output)
    residual      the branch added to the residual stream (attention / MLP output)

A LayerNorm's *output* is already quantized in the common protocol by the Linear that reads it
(`post_ln`; `head_in` after the final norm), so it needs no role of its own.
"""

PATCH_IN = "patch_in"
POST_LN = "post_ln"
Q = "q"
K = "k"
POST_SOFTMAX = "post_softmax"
V = "v"
ATTN_OUT = "attn_out"
POST_GELU = "post_gelu"
HEAD_IN = "head_in"
OTHER_IN = "other_in"
WEIGHT = "weight"

ACTIVATION_ROLES = (PATCH_IN, POST_LN, Q, K, POST_SOFTMAX, V, ATTN_OUT, POST_GELU, HEAD_IN, OTHER_IN)

LN_IN = "ln_in"
SOFTMAX_IN = "softmax_in"
GELU_IN = "gelu_in"
RESIDUAL = "residual"

FULL_ROLES = (LN_IN, SOFTMAX_IN, GELU_IN, RESIDUAL)
