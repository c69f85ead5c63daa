//! Parsing, binding and delegation costs.
//!
//! Run with `cargo bench -p waymark-dtab`. Targets: parsing at 50 MB/s or more; binding
//! `/svc/<name>` through a 100-dentry dtab with 5 levels of rewriting in under 5 µs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use waymark_dtab::{BindOptions, Dtab, Namers, Path, bind_path, delegate};

/// A realistic 1,000-dentry dtab: service routes with alternatives, weighted splits and
/// comments.
fn thousand_dentries() -> String {
    let mut text = String::from("# generated routes\n");
    for i in 0..1000 {
        match i % 4 {
            0 => text.push_str(&format!("/svc/service-{i} => /#/io.l5d.k8s/prod/http/service-{i} ;\n")),
            1 => text.push_str(&format!(
                "/svc/service-{i} => 0.95 * /srv/service-{i}/v1 & 0.05 * /srv/service-{i}/v2 ; # canary\n"
            )),
            2 => {
                text.push_str(&format!("/srv/service-{i}/* => /$/inet/10.0.{}.{}/8080 | /$/fail ;\n", i / 256, i % 256))
            }
            _ => text.push_str(&format!("/svc/service-{i}/grpc => /$/io.buoyant.porthostPfx/svc/service-{i}:8443 ;\n")),
        }
    }
    text
}

/// 100 dentries, of which five rewrite `/svc/<name>` level by level down to an inet address.
fn five_levels() -> Dtab {
    let mut dentries: Vec<String> = (0..95).map(|i| format!("/noise/n{i}=>/elsewhere/n{i} | /$/fail")).collect();
    dentries.push("/backend=>/$/inet/127.0.0.1".into());
    dentries.push("/cluster/*=>/backend".into());
    dentries.push("/region=>/cluster/east".into());
    dentries.push("/env=>/region".into());
    dentries.push("/svc=>/env".into());
    dentries.join(";").parse().expect("the benchmark dtab parses")
}

fn benches(c: &mut Criterion) {
    let text = thousand_dentries();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("dtab_1000_dentries", |b| b.iter(|| black_box(&text).parse::<Dtab>().expect("parses")));
    group.finish();

    let dtab = five_levels();
    let namers = Namers::new();
    let path: Path = "/svc/8080".parse().expect("path");
    let binding = bind_path(&dtab, &namers, &path, BindOptions::default());
    assert_eq!(binding.tree().expect("binds").to_string(), "/$/inet/127.0.0.1/8080");
    c.bench_function("bind_5_levels_100_dentries", |b| {
        b.iter(|| bind_path(black_box(&dtab), &namers, black_box(&path), BindOptions::default()))
    });
    c.bench_function("delegate_5_levels_100_dentries", |b| {
        b.iter(|| delegate(black_box(&dtab), &namers, black_box(&path), 100).expect("delegates"))
    });
    let shown = dtab.to_string();
    c.bench_function("print_100_dentries", |b| b.iter(|| black_box(&dtab).to_string()));
    assert_eq!(shown.parse::<Dtab>().expect("round trip"), dtab);
}

criterion_group!(dtab_benches, benches);
criterion_main!(dtab_benches);
