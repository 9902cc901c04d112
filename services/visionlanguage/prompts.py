"""Kosmos-2 prompt templates, per language.

Kosmos-2 was trained on English. The other templates are translations of its own
prompts; generation in those languages is zero-shot and its quality is not promised.
The tokenizer handles the scripts (the tiny test tokenizer has pieces for each).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Templates:
    brief: str
    detailed: str
    question: str  # with {question}


TEMPLATES: dict[str, Templates] = {
    "en": Templates("An image of", "Describe this image in detail:", "Question: {question} Answer:"),
    "fr": Templates("Une image de", "Décris cette image en détail :", "Question : {question} Réponse :"),
    "de": Templates("Ein Bild von", "Beschreibe dieses Bild im Detail:", "Frage: {question} Antwort:"),
    "es": Templates("Una imagen de", "Describe esta imagen en detalle:", "Pregunta: {question} Respuesta:"),
    "ru": Templates("Изображение", "Опишите это изображение подробно:", "Вопрос: {question} Ответ:"),
    "zh": Templates("这张图片中有", "详细描述这张图片：", "问题：{question} 答案："),
    "ja": Templates("この画像には", "この画像を詳しく説明してください：", "質問：{question} 答え："),
    "ar": Templates("صورة لـ", "صف هذه الصورة بالتفصيل:", "سؤال: {question} جواب:"),
    "hi": Templates("एक चित्र", "इस चित्र का विस्तार से वर्णन करें:", "प्रश्न: {question} उत्तर:"),
}
GROUNDING = "<grounding>"
