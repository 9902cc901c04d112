"""The two models of the seed comparison page, as catalogue records (our own wording).

The seed page lists kosmos-2-patch14-224 with 8 decomposed capabilities and Stable
Diffusion with 4, and shows adoption/ecosystem evidence for kosmos-2 only. These records
carry its facts where they hold, with every sentence rewritten, and correct the ones that
do not, each with its source:

- Pricing: the seed calls Stable Diffusion "Paid". Its weights are free to download and
  run: 1.x under the CreativeML Open RAIL-M licence, 2.x under CreativeML Open RAIL++-M,
  3.x under the Stability AI Community License (free below US$1M annual revenue, an
  Enterprise licence above). Kosmos-2's checkpoint is MIT-licensed. Each pricing plan
  names the page it was read from.
- Kosmos-2 cuts a 224x224 image into a 16x16 grid of 14-pixel patches (ViT-L/14), not the
  seed's "14x14 grid of 16x16 patches"; its location tokens index a separate 32x32 grid of
  bins. Its vision encoder is a CLIP ViT with a resampler feeding a separate text decoder
  (not "one transformer for patches and text") and it was not trained with a contrastive
  objective; its grounding data (GRIT) is English. The seed's 2D positional encoding,
  contrastive alignment and multilingual captioning claims are left out.
- Stable Diffusion's image-to-image follows a text prompt from a noised input image; it
  does not blend a separate style image in latent space as the seed says.
- The SD 1.5 checkpoint moved from runwayml/stable-diffusion-v1-5 (removed by its owner in
  2024) to stable-diffusion-v1-5/stable-diffusion-v1-5; both names resolve here.

These records carry no adoption, ecosystem or date readings: a figure nobody read here is
absent (its score "not measured"), never an illustrative number. The sourced, dated readings
of both models are in the shipped catalogue (graph/data/catalogue.jsonl, loaded by
``unfragile graph import catalogue``), which ``make run`` seeds. The pricing plans carry no
read date: their licences are cited, not a dated reading.
"""

from __future__ import annotations

from graph.records import Capability, ModelRecord, Pricing, PricingPlan

KOSMOS2_ID = "kosmos-2-patch14-224"
SD_ID = "stable-diffusion"
_HF = "https://huggingface.co/microsoft/kosmos-2-patch14-224"

KOSMOS2_PRICING = Pricing("free", (
    PricingPlan("Open weights", 0.0, "MIT-licensed checkpoint; run it yourself", _HF,
                "the model card gives the licence as MIT"),
))
SD_PRICING = Pricing("free", (
    PricingPlan("Open weights, 1.x", 0.0, "free to download and use, commercially too, within the licence's "
                "use restrictions", "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
                "the model card gives the licence as CreativeML Open RAIL-M"),
    PricingPlan("Open weights, 2.x", 0.0, "free to download and use within the licence's use restrictions",
                "https://huggingface.co/stabilityai/stable-diffusion-2-1",
                "the model card gives the licence as CreativeML Open RAIL++-M"),
    PricingPlan("Open weights, 3.x", 0.0, "free for research, non-commercial use and organisations or "
                "individuals under US$1M annual revenue; an Enterprise licence is needed above that",
                "https://stability.ai/community-license-agreement",
                "the Stability AI Community License is free for annual revenue under US$1M"),
))

KOSMOS2 = ModelRecord(
    id=KOSMOS2_ID,
    name="kosmos-2-patch14-224",
    type="model",
    aliases=("microsoft/kosmos-2-patch14-224", "Kosmos-2", "kosmos2"),
    pricing=KOSMOS2_PRICING,
    serving_endpoint="visionlanguage",
    version="patch14-224",
    tasks=("image-to-text",),
    slug="microsoft--kosmos-2-patch14-224",
    hub_id="microsoft/kosmos-2-patch14-224",
    url=_HF,
    organization="Microsoft",
    pipeline_tag="image-to-text",
    capabilities=(
        Capability(
            "Grounded image captioning",
            "Writes a caption for an image and can tie phrases in it to regions: the text decoder "
            "emits location tokens (indices into a 32x32 grid of image bins) around the phrases it "
            "grounds, so a caption comes back with a box per mentioned object.",
            "Boxes are ordinary vocabulary tokens of the same decoder that writes the words, so "
            "grounding needs no separate detection head or second model.",
            "Simpler to serve than a detector-plus-captioner pipeline; box precision is limited by "
            "the 32x32 bin grid, so a dedicated detector such as DETR or YOLO localises more finely.",
        ),
        Capability(
            "Phrase grounding (referring expressions)",
            "Given an image and a phrase such as 'the dog on the left', returns where that phrase is "
            "in the image, as normalised box coordinates decoded from location tokens.",
            "Uses the same prompt format as captioning ('<grounding><phrase>...</phrase>'), so one "
            "model answers both 'what is here' and 'where is X'.",
            "Handles open-vocabulary phrases unlike closed-set detectors, but is slower per box than "
            "a one-pass detector and returns at most a few boxes per phrase.",
        ),
        Capability(
            "Visual question answering",
            "Answers short questions about an image by continuing a text prompt ('Question: ... "
            "Answer:') conditioned on the image features.",
            "Answers can carry grounded boxes for the objects they mention.",
            "Convenient for short factual answers; larger instruction-tuned models (LLaVA-class) "
            "give longer and more reliable reasoning at far higher serving cost.",
        ),
        Capability(
            "Image-text similarity",
            "Scores how well a text matches an image by comparing pooled image features with the "
            "text representation, which is enough for re-ranking and probe scoring.",
            "Reuses the captioning model's own encoders, so one loaded model serves captions and "
            "similarity scores.",
            "Not trained with a contrastive objective like CLIP or SigLIP, so its similarity "
            "scores are less calibrated for zero-shot retrieval than a dedicated dual encoder.",
        ),
        Capability(
            "Image and text embeddings",
            "Produces fixed-size vectors for images (pooled vision features) and for text, usable "
            "for nearest-neighbour search and clustering.",
            "Image embeddings come from a ViT-L/14 encoder at 224x224 resampled to 64 latent query "
            "tokens, so they are compact and cheap to cache.",
            "Fine for grouping and rough retrieval; a contrastive encoder remains the better choice "
            "when embedding quality alone matters.",
        ),
        Capability(
            "Streaming caption generation",
            "Emits caption tokens as they are decoded, so a client can show text before the whole "
            "caption is finished.",
            "Grounding tokens are resolved into boxes as soon as a phrase closes, not only at the end.",
            "Lower time-to-first-token than waiting for a full caption; total latency is unchanged.",
        ),
        Capability(
            "Attention maps over the image",
            "Exposes which image regions the model attended to while producing each output token, "
            "mapped back onto the 16x16 patch grid of the vision encoder.",
            "The 64 latent query slots are mapped back to patches through the resampler's "
            "attention, so maps are spatial even though the decoder sees only 64 slots.",
            "Cheap, per-token insight into the model's focus; attention is not an explanation, and "
            "gradient-based attribution can disagree with it.",
        ),
        Capability(
            "Batched and reduced-precision inference",
            "Runs several images per forward pass and in float16 on GPUs (or dynamic int8 "
            "quantisation on CPUs) to raise throughput and cut memory.",
            "Image features can be computed once and reused across prompts for the same image.",
            "Higher throughput than one-by-one calls; int8 trades a little accuracy for memory and "
            "speed, and batching adds some queueing delay.",
        ),
    ),
)

STABLE_DIFFUSION = ModelRecord(
    id=SD_ID,
    name="Stable Diffusion",
    type="model",
    aliases=("stable diffusion", "sd", "stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5",
             "runwayml/stable-diffusion-v1-5"),
    pricing=SD_PRICING,
    serving_endpoint="diffusion",
    version="v1-5",
    tasks=("text-to-image",),
    slug="stable-diffusion-v1-5--stable-diffusion-v1-5",
    hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    url="https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
    organization="Stable Diffusion community (weights by Runway and Stability AI)",
    pipeline_tag="text-to-image",
    capabilities=(
        Capability(
            "Text-to-image generation",
            "Turns a text prompt into an image by denoising a random latent step by step under the "
            "guidance of the prompt's text encoding, then decoding the latent with a VAE.",
            "Works in a compressed latent space (8x smaller per side than pixels), so each "
            "denoising step is cheap enough for consumer GPUs.",
            "Much cheaper per image than pixel-space diffusion models; newer, larger models "
            "(SDXL-class) follow long prompts and render text more faithfully.",
        ),
        Capability(
            "Inpainting",
            "Regenerates only a masked region of an existing image from a prompt, keeping the rest "
            "and blending the new content with its surroundings.",
            "A dedicated UNet with extra input channels for the mask and the masked image keeps the "
            "unmasked pixels' context during every denoising step.",
            "Edits from a text description rather than copying nearby pixels as classic "
            "patch-based inpainting does; results vary with the seed.",
        ),
        Capability(
            "Image-to-image and style transfer",
            "Starts from a partially noised version of an input image instead of pure noise, so the "
            "output keeps the input's layout while following a new prompt or style.",
            "One 'strength' number trades faithfulness to the input against freedom to follow the "
            "prompt.",
            "More flexible than classic neural style transfer (any style a prompt can describe); "
            "less exact at preserving fine detail.",
        ),
        Capability(
            "Fine-tuning with adapters",
            "Adapts the model to a new subject or style from a small image set by training low-rank "
            "(LoRA) adapters on the attention layers while the base weights stay frozen.",
            "Adapters are a few megabytes and can be loaded, mixed and switched at serving time.",
            "Far cheaper than full fine-tuning and needs little data; can overfit to the training "
            "images with too many steps.",
        ),
    ),
)

SEED_MODELS: tuple[ModelRecord, ...] = (KOSMOS2, STABLE_DIFFUSION)
