use super::*;

fn one(value: &[u8]) -> bytes::Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(NewRecord { key: None, value, headers: &[], timestamp: 1 });
    b.finish().unwrap()
}

#[test]
fn smoke_round_trip() {
    let bytes = one(b"hello");
    let view = BatchView::new(&bytes).unwrap();
    let records = view.records().unwrap();
    let all = records.to_vec().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].value, b"hello");
}
