"""The intent taxonomy and its synonym table (the data ``graph.intents`` classifies with).

Intents are what people ask a model to do ("caption an image") and the qualities they ask it for
("generate an image fast", "run on a small device"): a query or a capability may express several.
Each cue is a regular expression over the lower-cased text, matched on word boundaries, with a weight:
strong, specific cues 1.5-2, ordinary ones 1, words that merely lean one way 0.3-0.7. A cue counts only
where the text it matched holds a word that is not a stop word.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IntentDef:
    id: str
    label: str  # how a person says it
    category: str  # capability://<category>


TAXONOMY: tuple[IntentDef, ...] = (
    IntentDef("caption", "caption an image", "image.understanding.caption"),
    IntentDef("detailed", "describe an image in detail", "image.understanding.detailed-description"),
    IntentDef("vqa", "answer questions about an image", "image.understanding.question-answering"),
    IntentDef("multi-image", "compare or reason over several images", "image.understanding.multi-image"),
    IntentDef("ground", "ground a phrase in an image", "image.understanding.grounding"),
    IntentDef("detect", "detect or count objects in an image", "image.understanding.detection"),
    IntentDef("segment", "segment an image", "image.understanding.segmentation"),
    IntentDef("ocr", "read text in an image", "image.understanding.ocr"),
    IntentDef("document", "understand a document or chart", "image.understanding.document"),
    IntentDef("classify", "classify an image", "image.understanding.classification"),
    IntentDef("embed", "embed images and text", "multimodal.embedding"),
    IntentDef("video", "generate or understand video", "video"),
    IntentDef("generate", "generate an image from text", "image.generation.text-to-image"),
    IntentDef("fast", "generate an image fast", "image.generation.fast"),
    IntentDef("hires", "generate a high-resolution image", "image.generation.high-resolution"),
    IntentDef("aesthetic", "generate a photorealistic or aesthetic image", "image.generation.aesthetic"),
    IntentDef("typography", "render text in an image", "image.generation.typography"),
    IntentDef("img2img", "transform an image into another", "image.generation.image-to-image"),
    IntentDef("edit", "edit an image by instruction", "image.generation.edit"),
    IntentDef("inpaint", "inpaint or outpaint a region", "image.generation.inpaint"),
    IntentDef("refine", "refine the details of an image", "image.generation.refine"),
    IntentDef("upscale", "upscale an image", "image.generation.upscale"),
    IntentDef("control", "generate an image guided by a pose, edges or depth", "image.generation.controlled"),
    IntentDef("finetune", "fine-tune a model on my own data or style", "model.fine-tuning"),
    IntentDef("multilingual", "use prompts or captions in another language", "language.multilingual"),
    IntentDef("small", "run on a small device, a CPU or cheaply", "deployment.small"),
)
_IMG = r"(?:an?\s+|the\s+|my\s+|this\s+|each\s+of\s+my\s+)?(?:images?|photos?|pictures?|pics?|screenshots?|scenes?)"
_LANGS = r"(?:chinese|russian|japanese|korean|german|french|spanish|arabic|hindi|portuguese|italian)"

CUES: dict[str, tuple[tuple[str, float], ...]] = {
    "caption": (
        (r"caption(?:s|ed|ing|er|ers)?", 1.5), (r"images?[\s-]*(?:to|2)[\s-]*(?:the\s+)?text", 1.5),
        (r"describ(?:e|es|ed|ing)", 1.0), (r"descriptions?", 0.8), (r"alt[\s-]*text", 1.5),
        (r"what(?:'s|\s+is)\s+in\s+" + _IMG, 1.0), (r"narrat(?:e|es|ing|ion)", 0.7),
        (r"summari[sz](?:e|es|ing)\s+" + _IMG, 1.0), (r"image\s+understanding", 0.5),
    ),
    "detailed": (
        (r"in\s+(?:great\s+|full\s+)?detail", 1.5), (r"detailed", 1.0), (r"long(?:er)?\s+(?:captions?|descriptions?)",
                                                                          1.0),
        (r"(?:dense|paragraph)\s+captions?", 1.2), (r"levels?\s+of\s+detail", 1.0),
    ),
    "vqa": (
        (r"vqa", 2.0), (r"visual\s+question", 2.0), (r"questions?", 1.0), (r"answer(?:s|ed|ing)?", 0.7),
        (r"ask(?:s|ed|ing)?", 0.7), (r"chat(?:s|ting|bot)?", 0.8), (r"conversation(?:s|al)?", 0.7),
        (r"multi[\s-]*turn", 0.7), (r"reason(?:s|ing)?\s+(?:about|over)", 0.8), (r"visual\s+reasoning", 1.0),
        (r"(?:vision|visual|multimodal)[\s-]+(?:language\s+)?assistant", 1.0), (r"instruction[\s-]*following", 0.5),
        (r"interrogat(?:e|ing)", 0.7), (r"explain(?:s|ing)?", 0.6), (r"tell\s+me\s+(?:about|what|why|how)", 0.7),
    ),
    "multi-image": (
        (r"compar(?:e|es|ed|ing|ison)\s+(?:\w+\s+){0,3}(?:images|photos|pictures|pics)", 2.0),
        (r"(?:multiple|several|many|two|three)\s+(?:\w+\s+)?(?:images|photos|pictures)", 1.0),
        (r"multi[\s-]*image", 2.0), (r"side[\s-]+by[\s-]+side", 1.0), (r"interleaved", 1.0),
    ),
    "ground": (
        (r"ground(?:s|ed|ing)?", 1.5), (r"locali[sz](?:e|es|ed|ing|ation)", 1.2), (r"locat(?:e|es|ed|ing)", 1.0),
        (r"bounding[\s-]+box(?:es)?", 1.5), (r"box(?:es)?", 0.8), (r"referring\s+expressions?", 1.5),
        (r"phrases?", 0.6), (r"regions?", 0.6), (r"coordinates", 0.8), (r"point(?:s|ing)?\s+(?:to|at|out)", 0.6),
        (r"which\s+part\s+of", 0.6), (r"find(?:s|ing)?\s+(?:\w+\s+){0,4}in\s+" + _IMG, 1.0),
    ),
    "detect": (
        (r"detect(?:s|ed|ing|ion|ions|or)?", 1.3), (r"objects?", 0.5), (r"find\s+(?:all\s+)?(?:the\s+)?objects", 1.0),
        (r"draw(?:s|ing)?\s+(?:bounding\s+)?box(?:es)?", 1.5),
        (r"count(?:s|ing)?\s+(?:the\s+|all\s+)?(?:\w+\s+)?(?:objects|people|persons|things|items|cars|animals)", 1.5),
        (r"how\s+many", 1.0),
    ),
    "segment": (
        (r"segment(?:s|ed|ing|ation)?", 1.5), (r"cut[\s-]*outs?", 0.8), (r"matting", 1.0),
        (r"(?:remov(?:e|es|ing)|eras(?:e|ing))\s+(?:the\s+)?backgrounds?", 1.2), (r"background\s+removal", 1.2),
    ),
    "ocr": (
        (r"ocr", 2.0), (r"text\s+recognition", 1.5), (r"transcrib(?:e|es|ed|ing)", 1.0), (r"handwrit(?:ing|ten)", 1.2),
        (r"extract(?:s|ing)?\s+(?:the\s+)?(?:text|words)", 1.5), (r"signs?", 0.8), (r"words\s+on", 1.2),
        (r"read(?:s|ing)?\s+(?:the\s+)?(?:text|words|signs?|labels?)", 1.5), (r"screenshots?", 0.5),
        (rf"(?:text|words|writing)\s+(?:in|from|on)\s+{_IMG}", 1.5), (r"scann(?:ed|ing)", 0.6),
    ),
    "document": (
        (r"documents?", 1.2), (r"receipts?", 1.0), (r"invoices?", 1.0), (r"pdfs?", 1.0), (r"forms?", 0.6),
        (r"(?:charts?|tables?|diagrams?|infographics?|plots?|graphs?)", 1.0), (r"slides?", 0.6),
        (r"extract(?:s|ing)?\s+fields?", 1.2),
    ),
    "classify": (
        (r"classif(?:y|ies|ied|ying|ication|ier)", 1.5), (r"categori[sz](?:e|es|ed|ing|ation)", 1.0),
        (r"label(?:s|led|ling|ing)?\s+" + _IMG, 1.0), (r"tag(?:s|ging)?\s+" + _IMG, 0.8),
        (r"recogni[sz](?:e|es|ing|ition)", 0.6),
    ),
    "embed": (
        (r"embed(?:s|ding|dings)?", 2.0), (r"vectors?", 1.0), (r"similarit(?:y|ies)", 1.0),
        (r"retriev(?:e|es|al|ing)", 1.2), (r"zero[\s-]*shot", 1.0), (r"semantic\s+search", 1.2),
        (r"(?:image|photo)\s+search", 1.0), (r"search(?:ing)?\s+(?:for\s+)?(?:images|photos|pictures)", 1.0),
        (r"dual[\s-]*encoder", 1.0), (r"contrastive", 0.8), (r"how\s+well\s+(?:\w+\s+){0,3}match(?:es)?", 1.5),
        (r"match(?:es|ing)?\s+(?:\w+\s+)?(?:text|captions?)\s+(?:and|to|with)\s+(?:an?\s+)?images?", 1.5),
    ),
    "video": ((r"videos?", 1.5), (r"clips?\s+of", 0.5), (r"animat(?:e|ion|ions|ed|ing)", 1.0), (r"frames", 0.4)),
    "generate": (
        # "generate alt text" / "generate a caption" are captioning; "draw boxes" is detection
        (r"generat(?:e|es|ed|ing|ion|ions|or|ive)(?!\s+(?:alt|a\s+caption|captions?|descriptions?|text\b))", 1.0),
        (r"creat(?:e|es|ed|ing)", 0.7), (r"draw(?:s|ing|n)?(?!\s+(?:bounding\s+)?box)", 1.0),
        (r"render(?:s|ed|ing)?", 0.8), (r"paint(?:s|ed|ing|ings)?", 0.8), (r"illustrat(?:e|es|ion|ions|ing)", 1.0),
        (r"art(?:work|works|istic)?", 0.6), (r"text[\s-]*(?:to|2)[\s-]*(?:an?\s+|the\s+)?images?", 2.0),
        (r"t2i", 2.0),
        (r"(?:image|picture|photo)s?\s+from\s+(?:a\s+|my\s+)?(?:text|prompts?|descriptions?|words)", 1.5),
        (r"from\s+(?:a\s+)?(?:text\s+)?(?:prompts?|descriptions?)", 1.0), (r"prompts?", 0.7), (r"logos?", 0.6),
        (r"concept\s+art", 1.0), (r"mak(?:e|es|ing)", 0.5), (r"(?:posters?|wallpapers?|avatars?)", 0.5),
        (r"imagin(?:e|ing)", 0.5), (r"image\s+generat(?:ion|or)", 1.0), (r"diffusion", 0.5),
    ),
    "fast": (
        (r"fast(?:er|est)?", 1.2), (r"quick(?:ly|er|est)?", 1.0), (r"real[\s-]*time", 1.5), (r"turbo", 1.2),
        (r"(?:one|single|two|few|four|1|2|4)[\s-]+steps?", 1.5), (r"low[\s-]+latency", 1.2), (r"instant(?:ly)?", 1.0),
        (r"under\s+a\s+second", 1.5), (r"speed", 0.8), (r"distill(?:ed|ation)", 0.6),
    ),
    "hires": (
        (r"high[\s-]*res(?:olution)?", 1.5), (r"(?:4k|2k|8k)", 1.5), (r"1024(?:px)?", 0.8), (r"large\s+images?", 0.8),
        (r"wallpapers?", 0.6), (r"print(?:able)?", 0.5),
    ),
    "aesthetic": (
        (r"photo[\s-]*realistic", 1.2), (r"realistic", 1.0), (r"beautiful", 1.0), (r"aesthetic(?:s|ally)?", 1.2),
        (r"portraits?", 0.8), (r"stunning", 0.8), (r"high[\s-]+quality", 0.6), (r"lifelike", 1.0),
    ),
    "typography": (
        (r"typograph(?:y|ic)", 2.0), (r"(?:legible|readable)\s+text", 1.5), (r"text\s+rendering", 1.5),
        (r"render(?:s|ing)?\s+(?:the\s+)?(?:text|words|letters|titles?)", 1.5), (r"lettering", 1.2),
        (r"posters?\s+with", 1.0), (r"(?:spell(?:ed|ing)?|spelled)\s+(?:correctly|right)", 1.0),
    ),
    "img2img": (
        (r"image[\s-]*(?:to|2)[\s-]*image", 2.0), (r"img2img", 2.0), (r"style\s+transfer", 1.5),
        (r"restyl(?:e|es|ed|ing)", 1.0), (r"variations?", 1.0), (r"sketch(?:es)?", 1.0), (r"blend(?:s|ed|ing)?", 1.5),
        (r"transform(?:s|ed|ing)?\s+" + _IMG, 1.0), (r"(?:turn|convert)(?:s|ed|ing)?\s+" + _IMG, 0.8),
        (r"(?:mix|combin)(?:e|es|ed|ing)?\s+(?:two\s+)?(?:images|photos|pictures)", 1.2),
    ),
    "edit": (
        (r"edit(?:s|ed|ing|or)?", 1.5), (r"modif(?:y|ies|ied|ying)", 1.0), (r"retouch(?:ing)?", 1.0),
        (r"instruction[\s-]*based", 0.8), (r"chang(?:e|es|ing)\s+(?:the\s+)?(?:colou?r|style|background|sky)", 0.8),
    ),
    "inpaint": (
        (r"in[\s-]*paint(?:s|ed|ing)?", 2.0), (r"out[\s-]*paint(?:s|ed|ing)?", 2.0), (r"fill(?:s|ed|ing)?\s+in", 0.8),
        (r"mask(?:s|ed|ing)?", 1.0), (r"eras(?:e|es|ed|ing)", 1.0),
        (r"beyond\s+(?:its|the)\s+(?:borders?|edges?)", 1.5),
        (r"remov(?:e|es|ed|ing)\s+(?:an?\s+|the\s+)?(?:objects?|persons?|people|things?|watermarks?)", 1.5),
        (r"extend(?:s|ed|ing)?\s+(?:the\s+|an?\s+)?(?:image|picture|canvas|photo)", 1.0),
        (r"replac(?:e|es|ed|ing)\s+(?:a\s+)?part", 1.2),
    ),
    "refine": (
        (r"refin(?:e|es|ed|ing|er|ement)", 1.5), (r"polish(?:es|ed|ing)?", 1.0),
        (r"(?:improv|sharpen|enhanc)(?:e|es|ed|ing)?\s+(?:the\s+)?details?", 1.2), (r"details?", 0.4),
    ),
    "upscale": (
        (r"upscal(?:e|es|ed|ing|er|ers)", 2.0), (r"super[\s-]*resolution", 2.0),
        (r"(?:increas(?:e|ing)|higher|enhanc(?:e|ing)|improv(?:e|ing)|boost(?:ing)?)\s+(?:the\s+)?resolution", 1.5),
        (r"enlarg(?:e|es|ed|ing)", 0.8), (r"sharpen(?:s|ed|ing)?", 0.6), (r"restor(?:e|es|ing|ation)", 0.6),
    ),
    "control": (
        (r"control[\s-]*net", 2.0), (r"pose(?:s|d)?", 0.8), (r"depth(?:\s+maps?)?", 1.0), (r"canny", 1.0),
        (r"edge\s+maps?", 1.0), (r"(?:guided|conditioned)\s+(?:by|on)", 0.7), (r"t2i[\s-]*adapter", 2.0),
        (r"scribbles?", 0.8), (r"layout", 1.0), (r"control(?:s|led|ling)?\s+(?:the\s+)?", 0.8),
    ),
    "finetune": (
        (r"fine[\s-]*tun(?:e|es|ed|ing)", 2.0), (r"lora", 1.5), (r"dreambooth", 2.0), (r"my\s+own\s+style", 1.5),
        (r"train(?:s|ed|ing)?", 1.0), (r"custom(?:ise|ize|ised|ized)?\s+(?:model|style)", 1.0),
    ),
    "multilingual": (
        (_LANGS, 1.5), (r"(?:bi|multi)[\s-]*lingual", 1.5), (r"(?:other|another|many|several)\s+languages?", 1.5),
        (r"non[\s-]*english", 1.5), (r"translat(?:e|ion)", 0.8),
    ),
    "small": (
        (r"light[\s-]*weight", 1.5), (r"small(?:er|est)?", 0.8), (r"tiny", 1.0), (r"on[\s-]*device", 1.5),
        (r"edge\s+devices?", 1.5), (r"laptops?", 1.2), (r"cpus?", 1.2), (r"phones?|mobile", 1.0),
        (r"raspberry", 1.5), (r"cheap(?:ly|er|est)?", 0.8), (r"low[\s-]+(?:memory|vram|resources?)", 1.2),
        (r"(?:modest|limited|consumer)\s+hardware", 1.2), (r"(?:under|below|less\s+than)\s+(?:one|1|a)\s+billion", 1.5),
        (r"compact", 1.0), (r"efficient", 0.6),
    ),
}
assert set(CUES) == {d.id for d in TAXONOMY}
