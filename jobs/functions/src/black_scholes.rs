//! Black–Scholes pricing of a batch of European options: the compute kernel of the IPDPS'24
//! offload experiments (PARSEC's `blackscholes`), in double precision.
//!
//! # Layout
//!
//! Input: a packed array of records of [`OPTION_RECORD_BYTES`] = 40 bytes, five little-endian
//! `f64` each, in this order:
//!
//! | offset | field | unit |
//! |---|---|---|
//! | 0 | spot price `S` | currency |
//! | 8 | strike price `K` | currency |
//! | 16 | risk-free rate `r` | per year, continuously compounded (0.05 = 5 %) |
//! | 24 | volatility `σ` | per √year (0.2 = 20 %) |
//! | 32 | time to expiry `T` | years |
//!
//! Output: one record of [`PRICE_RECORD_BYTES`] = 16 bytes per input record, in the same order:
//! the call price then the put price, little-endian `f64`. Trailing input bytes that do not make
//! a whole record are ignored (so any payload size is a valid call). An option with `σ√T = 0`
//! is priced at its discounted intrinsic value; NaN in, NaN out.
//!
//! [`encode_options`] and [`decode_prices`] convert between these bytes and
//! [`OptionParams`] / [`Prices`]; [`black_scholes_reference`] prices typed records with the
//! same formulas, for checking results.

/// Bytes of one input record (five `f64`).
pub const OPTION_RECORD_BYTES: usize = 40;

/// Bytes of one output record (two `f64`).
pub const PRICE_RECORD_BYTES: usize = 16;

/// One European option.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptionParams {
    /// Spot price of the underlying.
    pub spot: f64,
    /// Strike price.
    pub strike: f64,
    /// Risk-free rate, continuously compounded, per year.
    pub rate: f64,
    /// Volatility per √year.
    pub volatility: f64,
    /// Time to expiry in years.
    pub time: f64,
}

/// The prices of one option.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    /// European call.
    pub call: f64,
    /// European put.
    pub put: f64,
}

/// The standard normal cumulative distribution function Φ(x).
///
/// Hart's double-precision rational approximation (Hart 1968, algorithm 5666, as given by
/// G. West, "Better approximations to cumulative normal functions", 2005): absolute error below
/// 1e-14 over the whole real line.
pub fn norm_cdf(x: f64) -> f64 {
    let z = x.abs();
    let tail = if z > 37.0 {
        0.0
    } else {
        let e = (-z * z / 2.0).exp();
        if z < 7.071_067_811_865_47 {
            let num = horner(
                &[
                    0.035_262_496_599_891_1,
                    0.700_383_064_443_688,
                    6.373_962_203_531_65,
                    33.912_866_078_383,
                    112.079_291_497_871,
                    221.213_596_169_931,
                    220.206_867_912_376,
                ],
                z,
            );
            let den = horner(
                &[
                    0.088_388_347_648_318_4,
                    1.755_667_163_182_64,
                    16.064_177_579_207,
                    86.780_732_202_946_1,
                    296.564_248_779_674,
                    637.333_633_378_831,
                    793.826_512_519_948,
                    440.413_735_824_752,
                ],
                z,
            );
            e * num / den
        } else {
            let b = z + 0.65;
            let b = z + 4.0 / b;
            let b = z + 3.0 / b;
            let b = z + 2.0 / b;
            let b = z + 1.0 / b;
            e / b / 2.506_628_274_631
        }
    };
    if x > 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// Evaluates the polynomial with `coeffs` (highest degree first) at `z`.
fn horner(coeffs: &[f64], z: f64) -> f64 {
    coeffs.iter().fold(0.0, |acc, &c| acc * z + c)
}

/// Prices one option with the Black–Scholes formulas:
/// `d1 = (ln(S/K) + (r + σ²/2)T) / (σ√T)`, `d2 = d1 − σ√T`,
/// `call = S·Φ(d1) − K·e^(−rT)·Φ(d2)`, `put = K·e^(−rT)·Φ(−d2) − S·Φ(−d1)`.
pub fn price(o: &OptionParams) -> Prices {
    let discounted_strike = o.strike * (-o.rate * o.time).exp();
    let sigma_sqrt_t = o.volatility * o.time.sqrt();
    if sigma_sqrt_t == 0.0 {
        return Prices {
            call: (o.spot - discounted_strike).max(0.0),
            put: (discounted_strike - o.spot).max(0.0),
        };
    }
    let d1 = ((o.spot / o.strike).ln() + (o.rate + 0.5 * o.volatility * o.volatility) * o.time)
        / sigma_sqrt_t;
    let d2 = d1 - sigma_sqrt_t;
    Prices {
        call: o.spot * norm_cdf(d1) - discounted_strike * norm_cdf(d2),
        put: discounted_strike * norm_cdf(-d2) - o.spot * norm_cdf(-d1),
    }
}

/// `black_scholes`: prices every whole 40-byte record of `input` into 16-byte records of
/// `output` (see the [module documentation](self)). Returns the output length; when `output` is
/// too small it computes nothing and returns the length it needs.
pub fn black_scholes(input: &[u8], output: &mut [u8]) -> usize {
    let records = input.len() / OPTION_RECORD_BYTES;
    let needed = records * PRICE_RECORD_BYTES;
    let Some(output) = output.get_mut(..needed) else {
        return needed;
    };
    for (rec, out) in input
        .chunks_exact(OPTION_RECORD_BYTES)
        .zip(output.chunks_exact_mut(PRICE_RECORD_BYTES))
    {
        let p = price(&read_option(rec));
        out[..8].copy_from_slice(&p.call.to_le_bytes());
        out[8..].copy_from_slice(&p.put.to_le_bytes());
    }
    needed
}

/// Prices typed options: the reference the byte-level [`black_scholes`] is checked against.
pub fn black_scholes_reference(options: &[OptionParams]) -> Vec<Prices> {
    options.iter().map(price).collect()
}

/// Packs options into the input layout of [`black_scholes`].
pub fn encode_options(options: &[OptionParams]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(options.len() * OPTION_RECORD_BYTES);
    for o in options {
        for v in [o.spot, o.strike, o.rate, o.volatility, o.time] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    bytes
}

/// Unpacks the output of [`black_scholes`] (trailing bytes that are not a whole record are
/// ignored).
pub fn decode_prices(bytes: &[u8]) -> Vec<Prices> {
    bytes
        .chunks_exact(PRICE_RECORD_BYTES)
        .map(|r| Prices {
            call: f64_at(r, 0),
            put: f64_at(r, 8),
        })
        .collect()
}

fn read_option(rec: &[u8]) -> OptionParams {
    OptionParams {
        spot: f64_at(rec, 0),
        strike: f64_at(rec, 8),
        rate: f64_at(rec, 16),
        volatility: f64_at(rec, 24),
        time: f64_at(rec, 32),
    }
}

fn f64_at(bytes: &[u8], offset: usize) -> f64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    f64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_cdf_known_values() {
        let cases = [
            (0.0, 0.5),
            (0.5, 0.691_462_461_274_013_1),
            (1.0, 0.841_344_746_068_542_9),
            (-2.0, 0.022_750_131_948_179_195),
            (2.5, 0.993_790_334_674_223_8),
            (-3.5, 2.326_290_790_355_250_4e-4),
            (-8.0, 6.220_960_574_271_78e-16),
            (40.0, 1.0),
            (-40.0, 0.0),
        ];
        for (x, want) in cases {
            let got = norm_cdf(x);
            assert!(
                (got - want).abs() <= 1e-14 + 1e-12 * want.abs(),
                "Φ({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn textbook_option() {
        let p = price(&OptionParams {
            spot: 100.0,
            strike: 100.0,
            rate: 0.05,
            volatility: 0.2,
            time: 1.0,
        });
        assert!((p.call - 10.450_583_572_185_565).abs() < 1e-9, "{p:?}");
        assert!((p.put - 5.573_526_022_256_971).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn bytes_match_reference_and_put_call_parity() {
        let options: Vec<_> = (0..50)
            .map(|i| {
                let i = f64::from(i);
                OptionParams {
                    spot: 50.0 + 2.0 * i,
                    strike: 100.0 - i,
                    rate: 0.01 + 0.001 * i,
                    volatility: 0.1 + 0.01 * i,
                    time: 0.25 + 0.05 * i,
                }
            })
            .collect();
        let mut input = encode_options(&options);
        input.extend_from_slice(&[7; 13]); // a partial record is ignored
        let mut output = vec![0u8; options.len() * PRICE_RECORD_BYTES + 3];
        assert_eq!(black_scholes(&input, &mut output), options.len() * 16);
        let got = decode_prices(&output[..options.len() * 16]);
        assert_eq!(got, black_scholes_reference(&options));
        for (o, p) in options.iter().zip(&got) {
            let parity = o.spot - o.strike * (-o.rate * o.time).exp();
            assert!((p.call - p.put - parity).abs() < 1e-9, "{o:?} {p:?}");
        }
        let mut small = vec![0u8; 15];
        assert_eq!(black_scholes(&input, &mut small), options.len() * 16);
    }

    #[test]
    fn degenerate_options() {
        let p = price(&OptionParams {
            spot: 120.0,
            strike: 100.0,
            rate: 0.0,
            volatility: 0.0,
            time: 1.0,
        });
        assert_eq!(
            p,
            Prices {
                call: 20.0,
                put: 0.0
            }
        );
        let p = price(&OptionParams {
            spot: 80.0,
            strike: 100.0,
            rate: 0.05,
            volatility: 0.3,
            time: 0.0,
        });
        assert_eq!(
            p,
            Prices {
                call: 0.0,
                put: 20.0
            }
        );
    }
}
