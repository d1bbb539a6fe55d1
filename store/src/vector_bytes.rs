/// Encodes a vector as little-endian f32 bytes, the column format of both backends.
pub fn encode_vector(vector: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(vector.len() * 4);
    for value in vector {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// Decodes little-endian f32 bytes. A length that is not a multiple of 4 means the
/// column was not written by Quiver.
pub fn decode_vector(bytes: &[u8]) -> Result<Vec<f32>, String> {
    if !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "a stored vector has {} bytes, not a multiple of 4",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_survive_the_round_trip_bit_for_bit() {
        let v = vec![0.11, -2.5e-8, f32::MAX, 0.0, -0.0];
        let back = decode_vector(&encode_vector(&v)).expect("valid");
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert!(decode_vector(&[1, 2, 3]).is_err());
    }
}
