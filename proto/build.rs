//! Generates the Rust side of `sightline/v1/*.proto` and the descriptor set
//! that the core serves through gRPC reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sightline_descriptor.bin"))
        .bytes(".sightline.v1.Batch.events")
        .bytes(".sightline.v1.MediaChunk.data")
        .bytes(".sightline.v1.QuicReply.message")
        .compile_protos(
            &[
                "sightline/v1/event.proto",
                "sightline/v1/ingest.proto",
                "sightline/v1/intake.proto",
                "sightline/v1/query.proto",
                "sightline/v1/media.proto",
                "sightline/v1/edge.proto",
            ],
            &["."],
        )?;
    Ok(())
}
