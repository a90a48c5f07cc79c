"""A scene's questions as the turns of one conversation: the image (and its depth) is encoded once per scene instead
of once per question, so a training step carries several answers for about the cost of one and a half.

Only questions about the plain view share a conversation; a point-depth question has its own image (the marker is
drawn on it), so it stays a conversation of its own. Turn order is the scene's row order (the world draws each
scene's questions in random order). Evaluation still asks each question alone, exactly as the first turn is asked.
"""

from __future__ import annotations


SCENE_CONVERSATION_TYPE = "scene"  # the question_type of a row that holds several questions


def scene_conversations(rows, max_turns: int | None = None):
    """`rows` (world rows: messages, images, depth, scene_id, marker) with the unmarked questions of each scene merged
    into conversations of at most `max_turns` question-answer turns (None: all of a scene's) on the scene's image;
    marked rows are kept as they are."""
    from datasets import concatenate_datasets

    groups: dict[str, list[int]] = {}
    single = []
    for index, (scene_id, marker) in enumerate(zip(rows["scene_id"], rows["marker"])):
        if marker:
            single.append(index)
        else:
            groups.setdefault(scene_id, []).append(index)
    chunks = []
    for indices in groups.values():
        step = max_turns or len(indices)
        chunks += [indices[start : start + step] for start in range(0, len(indices), step)]
    # The later turns need only their text: the question and answer columns, never the messages' image and depth.
    questions, answers = rows["question"], rows["answer"]

    def merge(row: dict, chunk_index: int) -> dict:
        chunk = chunks[chunk_index]
        if len(chunk) == 1:
            return {}
        user, assistant = row["messages"]  # the first question, on the scene's image (and its depth)
        question_block = next(part for part in user["content"] if part["type"] == "text")
        turns = [user, assistant]
        for index in chunk[1:]:  # the same blocks with other text, so every row keeps the dataset's schema
            turns.append({**user, "content": [{**question_block, "text": questions[index]}]})
            turns.append({**assistant, "content": [{**assistant["content"][0], "text": answers[index]}]})
        return {"messages": turns, "question_type": SCENE_CONVERSATION_TYPE}

    merged = rows.select([chunk[0] for chunk in chunks]).map(merge, with_indices=True, desc="scene conversations")
    return concatenate_datasets([merged, rows.select(single)]) if single else merged
