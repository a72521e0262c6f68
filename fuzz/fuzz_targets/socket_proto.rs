//! The local socket protocol, both directions: the daemon parsing a request line and a client
//! (the helpers, the NSS module) parsing an answer. Any bytes: never a panic. Invariants: a
//! request that parses re-encodes to a line that parses to the same request (the same line,
//! but for leading zeros in an id); an answer's head gives at most MAX_ANSWER_LINES; an
//! answer re-encoded parses to the same answer; lines carrying passwd/group records that parse
//! re-format to a line that parses to the same record.
#![no_main]

use guest_agent_wire::proto::{Answer, Head, MAX_ANSWER_LINES, MAX_LINE, Request, split_version};
use guest_agent_wire::records::{GroupRecord, PasswdRecord, format_group};
use libfuzzer_sys::fuzz_target;

fn request(line: &str) {
    if let Ok(r) = Request::parse(line) {
        // Re-encoded in the line's own version: no longer than the line, plus the `@N ` a
        // version-1 line without the prefix gains.
        let (version, _) = split_version(line).expect("a parsed line has a version");
        let encoded = r.encode_as(version);
        assert!(encoded.len() <= line.len() + format!("@{version} ").len());
        assert_eq!(Request::parse(&encoded), Ok(r.clone()));
        assert_eq!(Request::parse(&r.encode()), Ok(r));
    }
}

fn record(line: &str) {
    // Ids may carry leading zeros (`007`): the line formatted again is the canonical one.
    if let Ok(p) = PasswdRecord::parse(line) {
        let again = p.to_line().expect("a parsed passwd record formats");
        assert_eq!(PasswdRecord::parse(&again), Ok(p));
    }
    if let Ok(g) = GroupRecord::parse(line) {
        let members: Vec<&str> = g.members().collect();
        assert_eq!(members.len(), g.member_count());
        let again = format_group(g.name, g.gid, &members).expect("a parsed group formats");
        assert_eq!(GroupRecord::parse(&again), Ok(g));
    }
}

/// Reads a whole answer as the helpers' client does: the head, then COUNT lines.
fn answer(bytes: &str) -> Option<Answer> {
    let mut lines = bytes.split_inclusive('\n');
    let head = lines.next()?.strip_suffix('\n')?;
    if head.len() >= MAX_LINE {
        return None;
    }
    match Answer::parse_head(head).ok()? {
        Head::Other(a) => {
            assert!(!matches!(a, Answer::Ok(_)));
            Some(a)
        }
        Head::Ok(n) => {
            assert!(n <= MAX_ANSWER_LINES);
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let l = lines.next()?.strip_suffix('\n')?;
                if l.len() >= MAX_LINE {
                    return None;
                }
                record(l);
                out.push(l.to_owned());
            }
            Some(Answer::Ok(out))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Both ends read UTF-8 lines (the daemon with read_line into a String).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    request(text);
    if let Some(line) = text.strip_suffix('\n') {
        request(line);
    }
    record(text);
    if let Some(a) = answer(text) {
        // Re-encoded, an answer reads back as itself, once its reason is one line (the
        // encoder turns control characters into blanks) and without a CR in an OK line.
        let encoded = a.encode();
        let b = answer(&encoded).expect("an encoded answer parses");
        assert_eq!(b.encode(), encoded);
        if let Answer::Ok(lines) = &a
            && lines.iter().all(|l| !l.contains('\r'))
        {
            assert_eq!(b, a);
        }
    }
});
