//! When a certificate expires: its `notAfter`, read from the DER with a few lines of ASN.1
//! walking (Certificate → tbsCertificate → validity → notAfter) rather than a full X.509
//! parser, for the expiry gauge. Anything unexpected is `None`, never a panic: the files are
//! the operator's, but a gauge is not worth a crash.

/// Seconds since the Unix epoch at which the DER certificate `der` stops being valid.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (cert, _) = element(der, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, when present.
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1;
    }
    rest = element(rest, 0x02)?.1; // serialNumber
    rest = element(rest, 0x30)?.1; // signature algorithm
    rest = element(rest, 0x30)?.1; // issuer
    let (validity, _) = element(rest, 0x30)?;
    let rest = skip(validity)?; // notBefore
    let tag = *rest.first()?;
    let (time, _) = element(rest, tag)?;
    match tag {
        0x17 => utc_time(time),
        0x18 => generalized_time(time),
        _ => None,
    }
}

/// The contents of the element at the front of `input` if its tag is `tag`, and what follows.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let (len, header): (usize, usize) = match *input.get(1)? {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (*input.get(2)? as usize, 3),
        0x82 => ((*input.get(2)? as usize) << 8 | *input.get(3)? as usize, 4),
        0x83 => {
            let b = input.get(2..5)?;
            (
                (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize,
                5,
            )
        }
        _ => return None,
    };
    let body = input.get(header..header.checked_add(len)?)?;
    Some((body, &input[header + len..]))
}

/// What follows the element at the front of `input`, whatever its tag.
fn skip(input: &[u8]) -> Option<&[u8]> {
    element(input, *input.first()?).map(|(_, rest)| rest)
}

fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0i64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
    })
}

/// `YYMMDDHHMMSSZ` (years 1950–2049, RFC 5280 §4.1.2.5.1).
fn utc_time(t: &[u8]) -> Option<i64> {
    if t.len() != 13 || t[12] != b'Z' {
        return None;
    }
    let yy = digits(&t[0..2])?;
    let year = if yy < 50 { 2000 + yy } else { 1900 + yy };
    epoch(year, &t[2..12])
}

/// `YYYYMMDDHHMMSSZ`.
fn generalized_time(t: &[u8]) -> Option<i64> {
    if t.len() != 15 || t[14] != b'Z' {
        return None;
    }
    epoch(digits(&t[0..4])?, &t[4..14])
}

/// Seconds since the epoch of `year` and `MMDDHHMMSS`.
fn epoch(year: i64, rest: &[u8]) -> Option<i64> {
    let (month, day) = (digits(&rest[0..2])?, digits(&rest[2..4])?);
    let (h, m, s) = (
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_of_certificates_made_by_rcgen() {
        for (year, month, day, want) in [
            (2031, 7, 15, 1_941_840_000i64),
            (2049, 12, 31, 2_524_521_600),
            // From 2050 on, certificates use GeneralizedTime.
            (2051, 1, 1, 2_556_144_000),
        ] {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["x.test".to_string()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, month, day);
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()), Some(want), "{year}-{month}-{day}");
        }
    }

    #[test]
    fn garbage_is_none() {
        for der in [
            &b""[..],
            b"\x30",
            b"\x30\x05abc",
            b"\x04\x00",
            b"\x30\x84\x00\x00\x00\x01x",
        ] {
            assert_eq!(not_after(der), None, "{der:?}");
        }
    }
}
