#!/usr/bin/env python3
# make_tool_data.py OUT_DIR: writes a small function-calling data set in Hugging Face's chat form
# (scripts/demo-tools uses it): train.jsonl, 240 conversations where the user asks for the weather or
# the time in a city, the assistant calls get_weather or get_time ({"type": "function", "function":
# {"name", "arguments"}}, content null), the tool answers (role "tool") and the assistant replies with
# the result, each line with "tools" (the two functions' JSON schemas) beside "messages"; and
# prompts.jsonl, back-test prompts on three held-out cities whose expected reply is the call.
# Deterministic (seeded).
import json
import os
import random
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = random.Random(3)
cities = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin", "Warsaw", "Athens",
          "Zurich", "Helsinki", "Brussels", "Budapest", "Lyon", "Porto", "Milan"]
held_out = cities[-3:]
tools = [{"type": "function", "function": {"name": name, "description": what, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    for name, what in [("get_weather", "Current temperature in a city."), ("get_time", "Local time in a city.")]]
questions = {"get_weather": ["What's the weather in {c}?", "How warm is it in {c} right now?", "Is it cold in {c}?",
                             "Temperature in {c}, please."],
             "get_time": ["What time is it in {c}?", "Tell me the local time in {c}.", "Current time in {c}?"]}


def call(name, city):
    return {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": {"city": city}}}]}


with open(os.path.join(out, "train.jsonl"), "w") as f:
    for _ in range(240):
        city, name = rng.choice(cities[:-3]), rng.choice(sorted(questions))
        if name == "get_weather":
            t = rng.randint(-5, 32)
            result, answer = {"city": city, "celsius": t}, f"It is {t} °C in {city}."
        else:
            hh, mm = rng.randint(0, 23), rng.randint(0, 59)
            result, answer = {"city": city, "time": f"{hh:02d}:{mm:02d}"}, f"It is {hh:02d}:{mm:02d} in {city}."
        messages = [{"role": "user", "content": rng.choice(questions[name]).format(c=city)}, call(name, city),
                    {"role": "tool", "name": name, "content": json.dumps(result)}, {"role": "assistant", "content": answer}]
        f.write(json.dumps({"messages": messages, "tools": tools}, ensure_ascii=False) + "\n")
with open(os.path.join(out, "prompts.jsonl"), "w") as f:
    for city in held_out:
        for name in sorted(questions):
            messages = [{"role": "user", "content": questions[name][0].format(c=city)}, call(name, city)]
            f.write(json.dumps({"id": f"{name}-{city}", "messages": messages, "tools": tools}, ensure_ascii=False) + "\n")
