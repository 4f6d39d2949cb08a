import logo from "../../icons/tidepool.svg";
import { ConnectionPanel } from "./components/ConnectionPanel";

export function App() {
  return (
    <div className="app">
      <header className="topbar">
        <img src={logo} alt="" width={28} height={28} />
        <h1>Tidepool</h1>
        <span className="muted">PostgreSQL changes, live and local</span>
      </header>
      <main>
        <ConnectionPanel />
      </main>
    </div>
  );
}
