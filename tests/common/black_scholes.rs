//! Black–Scholes prices computed independently of `rfaas::kernels::black_scholes`, to check its
//! results: the textbook closed form (Hull, "Options, Futures, and Other Derivatives", ch. 15)
//! with the standard normal CDF summed from its Taylor series (G. Marsaglia, "Evaluating the
//! Normal Distribution", J. Stat. Software 11(4), 2004), where the kernel uses Hart's rational
//! approximation.

/// Φ(x) = 1/2 + φ(x) (x + x³/3 + x⁵/(3·5) + ...), summed until a term no longer changes the sum
/// (absolute error about 1e-16). Beyond |x| = 9, where Φ is within 1.2e-19 of 0 or 1 (and the
/// series' terms would grow towards overflow), 0 or 1.
pub fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < -9.0 {
        return 0.0;
    }
    if x > 9.0 {
        return 1.0;
    }
    let (mut sum, mut term) = (x, x);
    let x2 = x * x;
    let mut i = 1.0;
    loop {
        i += 2.0;
        term *= x2 / i;
        let next = sum + term;
        if next == sum {
            break;
        }
        sum = next;
    }
    let density = (-0.5 * x2).exp() / (2.0 * std::f64::consts::PI).sqrt();
    0.5 + sum * density
}

/// `(call, put)` of a European option: spot `s`, strike `k`, rate `r`, volatility `v`, time `t`
/// (`v > 0`, `t > 0`).
pub fn prices(s: f64, k: f64, r: f64, v: f64, t: f64) -> (f64, f64) {
    let vt = v * t.sqrt();
    let d1 = ((s / k).ln() + (r + v * v / 2.0) * t) / vt;
    let d2 = d1 - vt;
    let discounted = k * (-r * t).exp();
    let call = s * normal_cdf(d1) - discounted * normal_cdf(d2);
    let put = discounted * normal_cdf(-d2) - s * normal_cdf(-d1);
    (call, put)
}

/// Checks the checker against published values: Φ from tables (Abramowitz & Stegun 26.2), and
/// Hull's example 15.6 (S = 42, K = 40, r = 10 %, σ = 20 %, T = 0.5: call 4.76, put 0.81).
pub fn self_check() {
    for (x, want) in [
        (0.0, 0.5),
        (1.0, 0.841_344_746_068_542_9),
        (-2.0, 0.022_750_131_948_179_2),
        (2.5, 0.993_790_334_674_224),
        (-3.5, 2.326_290_790_355_25e-4),
    ] {
        let got = normal_cdf(x);
        assert!(
            (got - want).abs() < 1e-14,
            "Φ({x}) = {got}, tables say {want}"
        );
    }
    let (call, put) = prices(42.0, 40.0, 0.1, 0.2, 0.5);
    assert!(
        (call - 4.76).abs() < 0.005 && (put - 0.81).abs() < 0.005,
        "call {call} put {put}"
    );
}
