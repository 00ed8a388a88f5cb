//! When an X.509 certificate is valid: `notBefore` and `notAfter` read from its DER, for
//! [`super::ResumedCheck`] to know until when a chain it verified stays as valid as it was.
//! Only the path to the validity is walked (certificate, to-be-signed part, the optional
//! version, serial number, signature algorithm, issuer); anything unexpected is `None`,
//! and the caller then verifies as if it had never seen the chain.

/// `(notBefore, notAfter)` of the certificate `der`, in seconds since the Unix epoch.
pub(super) fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (cert, _) = expect(SEQUENCE, der)?;
    let (tbs, _) = expect(SEQUENCE, cert)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = tlv(rest)?.2;
    }
    let (_serial, rest) = expect(INTEGER, rest)?;
    let (_algorithm, rest) = expect(SEQUENCE, rest)?;
    let (_issuer, rest) = expect(SEQUENCE, rest)?;
    let (validity, _) = expect(SEQUENCE, rest)?;
    let (tag, not_before, rest) = tlv(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = tlv(rest)?;
    Some((not_before, time(tag, not_after)?))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT Version`.
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

fn expect(tag: u8, input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = tlv(input)?;
    (t == tag).then_some((content, rest))
}

/// One DER element: its tag, its content and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    (input.len() >= len).then(|| (tag, &input[..len], &input[len..]))
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950–2049) or GeneralizedTime `YYYYMMDDHHMMSSZ`, the
/// two forms RFC 5280 allows, as seconds since the Unix epoch.
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map(|i| digits(&rest[i..i + 2]));
    let (month, day) = (month?, day?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let seconds = hour? * 3600 + minute? * 60 + second?;
    Some(days_from_civil(year, month, day) * 86_400 + seconds)
}

fn digits(text: &[u8]) -> Option<i64> {
    text.iter().try_fold(0i64, |n, c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
}

/// Days from 1970-01-01 to the proleptic Gregorian date (the usual era arithmetic: years
/// counted from March, so the leap day ends a year).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["bpfleet-operator".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("certificate").der().to_vec()
    }

    #[test]
    fn reads_both_time_forms_of_a_certificate() {
        // 2024-02-29 is UTCTime, 2051-03-01 GeneralizedTime (RFC 5280 from 2050 on).
        let der = certificate((2024, 2, 29), (2051, 3, 1));
        assert_eq!(validity(&der), Some((1_709_164_800, 2_561_241_600)));
        let der = certificate((1975, 1, 1), (4096, 1, 1));
        assert_eq!(validity(&der), Some((157_766_400, 67_090_118_400)));
    }

    #[test]
    fn anything_else_is_none() {
        let der = certificate((2024, 1, 1), (2025, 1, 1));
        assert_eq!(validity(&der[..der.len() / 2]), None, "cut short");
        assert_eq!(validity(b"not a certificate"), None);
        assert_eq!(validity(&[]), None);
        assert_eq!(time(UTC_TIME, b"2401011200+0"), None, "no Z");
        assert_eq!(time(UTC_TIME, b"241301120000Z"), None, "month 13");
        assert_eq!(time(GENERALIZED_TIME, b"240101120000Z"), None, "UTCTime text under the other tag");
    }
}
