//! The text of an `NSString` in a decoded object graph: its first `+` bytes, or else the text
//! of the first object it holds that has one, searched depth first in the order written.
//!
//! A stream can make objects hold themselves or each other (back-references), and objects
//! shared by many others: the search never enters an object it is already inside (such a
//! reference holds no text for it), remembers each object's answer, and keeps its own stack,
//! so neither cycles nor long or wide graphs can exhaust the thread's stack or time. On graphs
//! without cycles it answers what the plain recursive search answers.

use std::collections::HashMap;

use super::decode::{DecodeError, Decoded, Object, Value};

type Text = Option<Result<String, DecodeError>>;

/// The text of `obj` if it is an `NSString` (or a subclass) that holds one.
pub(super) fn nsstring_text(decoded: &Decoded, obj: &Object) -> Text {
    if !obj.is_a("NSString") {
        return None;
    }
    // Objects by address: finished (their answer) or on the current path (None).
    let mut seen: HashMap<*const Object, Option<Text>> = HashMap::new();
    // The path: each object with the position of its next value (group, index in group).
    let mut path: Vec<(&Object, usize, usize)> = vec![(obj, 0, 0)];
    seen.insert(obj, None);
    while let Some((current, group, index)) = path.last_mut() {
        let value = current.groups.get(*group).map(|g| g.get(*index));
        let found: Option<Text> = match value {
            // Past the last group: no text here.
            None => Some(None),
            // Past the end of a group: the next one.
            Some(None) => {
                *group += 1;
                *index = 0;
                continue;
            }
            Some(Some(v)) => {
                *index += 1;
                match v {
                    Value::Bytes(b) => Some(Some(
                        String::from_utf8(b.clone()).map_err(|e| DecodeError::InvalidUtf8(e.to_string())),
                    )),
                    Value::Object(_) => match decoded.object(v) {
                        None => None,
                        Some(inner) if !inner.is_a("NSString") => None,
                        Some(inner) => match seen.get(&(inner as *const Object)) {
                            // Finished: its answer, if it has text.
                            Some(Some(done)) => done.clone().map(Some),
                            // On the path: a cycle, no text this way.
                            Some(None) => None,
                            None => {
                                seen.insert(inner, None);
                                path.push((inner, 0, 0));
                                None
                            }
                        },
                    },
                    _ => None,
                }
            }
        };
        // An object is done when it found text (it holds it, or the child just entered had it)
        // or has no more values. Text ends its parent's search too; no text lets the parent
        // search on.
        let Some(text) = found else { continue };
        loop {
            let Some((done, _, _)) = path.pop() else {
                return text;
            };
            seen.insert(done, Some(text.clone()));
            if path.is_empty() {
                return text;
            }
            if text.is_none() {
                break;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(groups: Vec<Vec<Value>>) -> Object {
        Object {
            classes: vec!["NSMutableString".into(), "NSString".into(), "NSObject".into()],
            groups,
        }
    }

    /// The search as first written (recursive), for graphs without cycles.
    fn recursive(decoded: &Decoded, obj: &Object) -> Text {
        if !obj.is_a("NSString") {
            return None;
        }
        obj.groups.iter().flatten().find_map(|v| match v {
            Value::Bytes(b) => Some(String::from_utf8(b.clone()).map_err(|e| DecodeError::InvalidUtf8(e.to_string()))),
            Value::Object(_) => recursive(decoded, decoded.object(v)?),
            _ => None,
        })
    }

    #[test]
    fn agrees_with_the_recursive_search_without_cycles() {
        // Object i holds references to earlier objects (and some bytes), in varied orders.
        let mut state = 7u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..300 {
            let mut objects = Vec::new();
            for i in 0..12usize {
                let mut groups = Vec::new();
                for _ in 0..next(3) {
                    let mut group = Vec::new();
                    for _ in 0..next(4) {
                        group.push(match next(6) {
                            0 if next(3) == 0 => Value::Bytes(vec![b'a' + i as u8]),
                            1 => Value::Bytes(vec![0xff]),
                            2 | 3 if i > 0 => Value::Object(Some(next(i as u64) as usize)),
                            4 => Value::Object(None),
                            _ => Value::Int(1),
                        });
                    }
                    groups.push(group);
                }
                let mut o = string(groups);
                if next(5) == 0 {
                    o.classes = vec!["NSNumber".into()];
                }
                objects.push(o);
            }
            let decoded = Decoded {
                objects,
                top_level: Vec::new(),
            };
            for o in &decoded.objects {
                assert_eq!(nsstring_text(&decoded, o), recursive(&decoded, o));
            }
        }
    }

    #[test]
    fn cycles_and_deep_chains_end() {
        // 0 holds itself, then 1; 1 holds 0, then its bytes.
        let decoded = Decoded {
            objects: vec![
                string(vec![vec![Value::Object(Some(0)), Value::Object(Some(1))]]),
                string(vec![vec![Value::Object(Some(0))], vec![Value::Bytes(b"x".to_vec())]]),
            ],
            top_level: Vec::new(),
        };
        assert_eq!(nsstring_text(&decoded, &decoded.objects[0]), Some(Ok("x".into())));
        assert_eq!(nsstring_text(&decoded, &decoded.objects[1]), Some(Ok("x".into())));
        // A chain of 200,000 strings each holding the previous one, the first holding text.
        let mut objects = vec![string(vec![vec![Value::Bytes(b"deep".to_vec())]])];
        for i in 1..200_000 {
            objects.push(string(vec![vec![Value::Object(Some(i - 1))]]));
        }
        let decoded = Decoded {
            objects,
            top_level: Vec::new(),
        };
        assert_eq!(
            nsstring_text(&decoded, decoded.objects.last().expect("objects")),
            Some(Ok("deep".into()))
        );
    }
}
