//! The commands the UI may call. Each is one line: validate the transport value, call the engine.

use tidepool::connection::{self, ConnectionForm, ServerFacts};

/// Connects with the form's values and reads the server's facts.
#[tauri::command]
pub async fn test_connection(form: ConnectionForm) -> Result<ServerFacts, tidepool::Error> {
    connection::test_connection(&form.into_spec()?).await
}
